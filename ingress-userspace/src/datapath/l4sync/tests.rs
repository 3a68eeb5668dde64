use std::net::SocketAddr;

use super::*;
use crate::model::{
    ObjectKey,
    l4::{L4Backend, L4Service, Proto},
};

const M: u32 = 251;

fn svc(name: &str, backends: &[(&str, bool)]) -> L4Service {
    L4Service {
        service: ObjectKey::new("ns", name),
        port: "http".into(),
        backends: backends
            .iter()
            .map(|(a, terminating)| L4Backend {
                addr: a.parse().unwrap(),
                local: false,
                terminating: *terminating,
            })
            .collect(),
        local_policy: false,
        affinity_timeout: None,
        source_ranges: Vec::new(),
        health_check_node_port: None,
    }
}

fn table(entries: &[(&str, L4Service)]) -> L4Table {
    L4Table {
        services: entries
            .iter()
            .map(|(fe, s)| ((fe.parse::<SocketAddr>().unwrap(), Proto::Tcp), s.clone()))
            .collect(),
    }
}

/// Every write in `ops` only refers to things written before it or already
/// present in `old` and kept.
fn assert_safe_order(old: &MapImage, ops: &[MapOp]) {
    let mut backends: BTreeSet<u32> = old.backends.keys().copied().collect();
    let mut tables: BTreeSet<u32> = old.maglev.keys().copied().collect();
    let mut services_deleted = false;
    for op in ops {
        match op {
            MapOp::PutBackend(id, _) => {
                assert!(!services_deleted, "a put after a removal: {ops:?}");
                backends.insert(*id);
            }
            MapOp::PutMaglev(id, t) => {
                assert!(!services_deleted);
                for b in t.iter().filter(|b| **b != NO_BACKEND) {
                    assert!(
                        backends.contains(b),
                        "table {id} names backend {b} before it exists"
                    );
                }
                tables.insert(*id);
            }
            MapOp::PutRange(..) => assert!(!services_deleted),
            MapOp::PutPort(..) => {}
            MapOp::DeleteRange(..) => assert!(
                services_deleted || !ops.iter().any(|o| matches!(o, MapOp::DeleteService(_)))
            ),
            MapOp::PutService(_, v) => {
                assert!(!services_deleted);
                assert!(
                    tables.contains(&v.id),
                    "service points at table {} before it exists",
                    v.id
                );
            }
            MapOp::DeleteService(_) => services_deleted = true,
            MapOp::ClearMaglev(_) | MapOp::DeleteBackend(_) => {
                assert!(
                    services_deleted || !ops.iter().any(|o| matches!(o, MapOp::DeleteService(_)))
                );
            }
        }
    }
}

#[test]
fn first_sync_writes_backends_then_tables_then_services() {
    let mut ids = Ids::new(16, 64);
    let t = table(&[
        (
            "198.18.0.1:30080",
            svc(
                "web",
                &[("198.18.2.2:8080", false), ("198.18.2.3:8080", false)],
            ),
        ),
        (
            "198.18.0.1:30081",
            svc("api", &[("198.18.2.2:8080", false)]),
        ),
    ]);
    let (image, errors) = ids.image(&t, M);
    assert!(errors.is_empty());
    assert_eq!(
        image.backends.len(),
        2,
        "a pod behind two services is one backend"
    );
    assert_eq!(image.ports[&30080], PORT_FRONTEND);
    assert_eq!(image.ports[&8080], PORT_BACKEND);
    let ops = plan(&MapImage::default(), &image);
    assert_eq!(
        ops.len(),
        2 + 2 + 3 + 2,
        "backends, tables, ports, services"
    );
    assert_safe_order(&MapImage::default(), &ops);
    let web = image
        .services
        .values()
        .find(|v| v.backend_count == 2)
        .unwrap();
    assert_eq!(image.maglev[&web.id].len(), M as usize);
    assert!(image.maglev[&web.id].iter().all(|b| *b != NO_BACKEND));
    // Same table again: nothing to write.
    let (again, _) = ids.image(&t, M);
    assert_eq!(again, image);
    assert!(plan(&image, &again).is_empty());
}

#[test]
fn removals_go_services_then_tables_then_backends() {
    let mut ids = Ids::new(16, 64);
    let t1 = table(&[
        (
            "198.18.0.1:30080",
            svc("web", &[("198.18.2.2:8080", false)]),
        ),
        (
            "198.18.0.1:30081",
            svc("api", &[("198.18.2.9:9090", false)]),
        ),
    ]);
    let (i1, _) = ids.image(&t1, M);
    let t2 = table(&[(
        "198.18.0.1:30080",
        svc("web", &[("198.18.2.2:8080", false)]),
    )]);
    let (i2, _) = ids.image(&t2, M);
    let ops = plan(&i1, &i2);
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| match o {
            MapOp::DeleteService(_) => "service",
            MapOp::ClearMaglev(_) => "maglev",
            MapOp::DeleteBackend(_) => "backend",
            MapOp::PutPort(_, 0) => "port cleared",
            _ => "put",
        })
        .collect();
    // The frontend port (30081) and the backend port (9090) are cleared only
    // once the service is gone.
    assert_eq!(
        kinds,
        [
            "service",
            "port cleared",
            "port cleared",
            "maglev",
            "backend"
        ]
    );
}

#[test]
fn freed_ids_wait_one_sync_before_reuse() {
    let mut ids = Ids::new(2, 2);
    let (i1, _) = ids.image(
        &table(&[("198.18.0.1:1", svc("a", &[("198.18.2.1:80", false)]))]),
        M,
    );
    let a_id = i1.services.values().next().unwrap().id;
    let a_backend = *i1.backends.keys().next().unwrap();
    // a leaves and b arrives in the same sync: b must not get a's ids.
    let (i2, e2) = ids.image(
        &table(&[("198.18.0.1:2", svc("b", &[("198.18.2.2:80", false)]))]),
        M,
    );
    assert!(e2.is_empty());
    assert_ne!(i2.services.values().next().unwrap().id, a_id);
    assert_ne!(*i2.backends.keys().next().unwrap(), a_backend);
    assert_safe_order(&i1, &plan(&i1, &i2));
    // A sync later they are free again (capacity 2 forces the reuse).
    let (i3, e3) = ids.image(
        &table(&[
            ("198.18.0.1:2", svc("b", &[("198.18.2.2:80", false)])),
            ("198.18.0.1:3", svc("c", &[("198.18.2.3:80", false)])),
        ]),
        M,
    );
    assert!(e3.is_empty(), "{e3:?}");
    assert!(i3.services.values().any(|v| v.id == a_id));
}

#[test]
fn terminating_backends_keep_their_entry_but_leave_the_table() {
    let mut ids = Ids::new(4, 4);
    let (img, _) = ids.image(
        &table(&[(
            "198.18.0.1:1",
            svc("a", &[("198.18.2.1:80", false), ("198.18.2.2:80", true)]),
        )]),
        M,
    );
    let v = img.services.values().next().unwrap();
    assert_eq!(v.backend_count, 1);
    let terminating: Vec<u32> = img
        .backends
        .iter()
        .filter(|(_, b)| b.flags & BACKEND_TERMINATING != 0)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(terminating.len(), 1);
    assert!(!img.maglev[&v.id].contains(&terminating[0]));
}

#[test]
fn a_service_that_does_not_fit_is_reported_and_the_rest_kept() {
    let mut ids = Ids::new(1, 8);
    let (img, errors) = ids.image(
        &table(&[
            ("198.18.0.1:1", svc("a", &[("198.18.2.1:80", false)])),
            ("198.18.0.1:2", svc("b", &[("198.18.2.2:80", false)])),
        ]),
        M,
    );
    assert_eq!(img.services.len(), 1);
    assert_eq!(errors.len(), 1);
    assert!(matches!(errors[0], CapacityError::Services(..)));
}

#[test]
fn two_nodes_build_tables_that_pick_the_same_pods() {
    let t = table(&[(
        "198.18.0.1:30080",
        svc(
            "web",
            &[
                ("198.18.2.1:80", false),
                ("198.18.2.2:80", false),
                ("198.18.2.3:80", false),
            ],
        ),
    )]);
    // Node B has seen other services before, so its ids differ.
    let mut node_a = Ids::new(8, 8);
    let mut node_b = Ids::new(8, 8);
    node_b.image(
        &table(&[("198.18.0.1:9", svc("x", &[("198.18.3.3:80", false)]))]),
        M,
    );
    node_b.image(&L4Table::default(), M);
    let (a, _) = node_a.image(&t, M);
    let (b, _) = node_b.image(&t, M);
    let pods = |img: &MapImage| -> Vec<[u8; 16]> {
        let v = img.services.values().next().unwrap();
        img.maglev[&v.id]
            .iter()
            .map(|id| img.backends[id].addr)
            .collect()
    };
    assert_eq!(pods(&a), pods(&b));
}

#[test]
fn source_ranges_are_masked_and_written_around_the_service() {
    let mut ids = Ids::new(4, 4);
    let mut s = svc("a", &[("198.18.2.1:80", false)]);
    s.source_ranges = vec![
        ("198.18.0.77".parse().unwrap(), 24),
        ("fd00::1".parse().unwrap(), 8),
    ];
    let (img, _) = ids.image(&table(&[("198.18.0.1:1", s)]), M);
    let v = img.services.values().next().unwrap();
    assert!(v.flags & SVC_SOURCE_RANGES != 0);
    let ranges: Vec<_> = img.ranges.iter().cloned().collect();
    assert_eq!(ranges.len(), 2);
    assert_eq!(
        ranges.iter().find(|r| r.0 == 32 + 96 + 24).unwrap().1.addr,
        v4_mapped([198, 18, 0, 0])
    );
    let v6 = ranges.iter().find(|r| r.0 == 32 + 8).unwrap().1.addr;
    assert_eq!(v6[0], 0xfd);
    assert!(v6[1..].iter().all(|b| *b == 0));
    let ops = plan(&MapImage::default(), &img);
    let first_service = ops
        .iter()
        .position(|o| matches!(o, MapOp::PutService(..)))
        .unwrap();
    assert!(
        ops[..first_service]
            .iter()
            .filter(|o| matches!(o, MapOp::PutRange(..)))
            .count()
            == 2
    );
    assert_safe_order(&MapImage::default(), &ops);
    let (empty, _) = ids.image(&L4Table::default(), M);
    let ops = plan(&img, &empty);
    let delete_service = ops
        .iter()
        .position(|o| matches!(o, MapOp::DeleteService(..)))
        .unwrap();
    let delete_range = ops
        .iter()
        .position(|o| matches!(o, MapOp::DeleteRange(..)))
        .unwrap();
    assert!(delete_service < delete_range);
}
