//! From an L4 table to the contents of the eBPF maps, and from one map
//! image to the next as an ordered list of writes. Pure: the writes are
//! applied by the map layer.
//!
//! Order is what keeps packets from ever seeing half a service: backends
//! first, then Maglev tables that name them, then the services that point
//! at those tables; removals go the other way (services, tables, backends).
//! Ids freed by a sync are quarantined until the next one, so a slot a
//! packet may still reach through an old entry is never reused in the same
//! pass.

use std::collections::{BTreeMap, BTreeSet};

use ingress_common::{
    l4::{
        BACKEND_LOCAL, BACKEND_TERMINATING, BackendValue, NO_BACKEND, PORT_BACKEND, PORT_FRONTEND,
        RangeKey, SVC_CLIENT_AFFINITY, SVC_LOCAL_POLICY, SVC_SOURCE_RANGES, ServiceKey,
        ServiceValue, range_prefix_len, v4_mapped,
    },
    maglev,
};

use crate::model::l4::{L4Service, L4Table};

/// What the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapImage {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// Service id -> its Maglev table (backend ids).
    pub maglev: BTreeMap<u32, Vec<u32>>,
    /// `loadBalancerSourceRanges`: (LPM prefix length, key).
    pub ranges: BTreeSet<(u32, RangeKey)>,
    /// Port flags (frontend, backend), by port in host order.
    pub ports: BTreeMap<u16, u8>,
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend(u32, BackendValue),
    PutMaglev(u32, Vec<u32>),
    /// An allowed source prefix, written before the service that checks it.
    PutRange(u32, RangeKey),
    /// Port flags, set before the services that need them (0 clears).
    PutPort(u16, u8),
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    DeleteRange(u32, RangeKey),
    /// Fill the service id's table with NO_BACKEND.
    ClearMaglev(u32),
    DeleteBackend(u32),
}

/// Why part of a table could not be placed in the maps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapacityError {
    #[error("service {0} does not fit: the service map holds {1}")]
    Services(String, u32),
    #[error("backend {0} does not fit: the backend map holds {1}")]
    Backends(String, u32),
}

fn addr16(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(a) => v4_mapped(a.octets()),
        std::net::IpAddr::V6(a) => a.octets(),
    }
}

/// Stable ids for services (by frontend) and backends (by address and
/// port) across syncs.
#[derive(Debug)]
pub struct Ids {
    max_services: u32,
    max_backends: u32,
    services: BTreeMap<ServiceKey, u32>,
    backends: BTreeMap<([u8; 16], u16), u32>,
    free_services: BTreeSet<u32>,
    free_backends: BTreeSet<u32>,
    next_service: u32,
    next_backend: u32,
}

impl Ids {
    pub fn new(max_services: u32, max_backends: u32) -> Self {
        Ids {
            max_services,
            max_backends,
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            free_services: BTreeSet::new(),
            free_backends: BTreeSet::new(),
            next_service: 0,
            next_backend: 0,
        }
    }

    fn take(free: &mut BTreeSet<u32>, next: &mut u32, max: u32) -> Option<u32> {
        if let Some(id) = free.pop_first() {
            return Some(id);
        }
        (*next < max).then(|| {
            *next += 1;
            *next - 1
        })
    }

    /// The image of `table` with a Maglev table of `table_size` (prime)
    /// slots per service. Services or backends that do not fit are left out
    /// and returned as errors; the rest is complete.
    pub fn image(&mut self, table: &L4Table, table_size: u32) -> (MapImage, Vec<CapacityError>) {
        let mut image = MapImage::default();
        let mut errors = Vec::new();
        let mut used_services = BTreeMap::new();
        let mut used_backends = BTreeMap::new();
        // Ids freed now become usable only on the next call.
        let (mut free_s, mut free_b) = (
            std::mem::take(&mut self.free_services),
            std::mem::take(&mut self.free_backends),
        );
        'services: for ((fe, proto), svc) in &table.services {
            let key = ServiceKey {
                addr: addr16(fe.ip()),
                port: fe.port().to_be(),
                proto: proto.number(),
                _pad: 0,
            };
            // Backends first: a service whose backends do not all fit is
            // left out whole rather than served half.
            let mut ids = Vec::new();
            for b in &svc.backends {
                let bkey = (addr16(b.addr.ip()), b.addr.port().to_be());
                let id = match self.backends.get(&bkey).or(used_backends.get(&bkey)) {
                    Some(id) => *id,
                    None => {
                        match Self::take(&mut free_b, &mut self.next_backend, self.max_backends) {
                            Some(id) => id,
                            None => {
                                errors.push(CapacityError::Backends(
                                    b.addr.to_string(),
                                    self.max_backends,
                                ));
                                continue 'services;
                            }
                        }
                    }
                };
                used_backends.insert(bkey, id);
                ids.push((id, b));
            }
            let sid = match self.services.get(&key) {
                Some(id) => *id,
                None => match Self::take(&mut free_s, &mut self.next_service, self.max_services) {
                    Some(id) => id,
                    None => {
                        errors.push(CapacityError::Services(
                            format!("{fe}/{proto:?}"),
                            self.max_services,
                        ));
                        continue;
                    }
                },
            };
            used_services.insert(key, sid);
            *image.ports.entry(fe.port()).or_default() |= PORT_FRONTEND;
            for (_, b) in &ids {
                *image.ports.entry(b.addr.port()).or_default() |= PORT_BACKEND;
            }
            for (id, b) in &ids {
                let mut flags = 0;
                if b.local {
                    flags |= BACKEND_LOCAL;
                }
                if b.terminating {
                    flags |= BACKEND_TERMINATING;
                }
                image.backends.insert(
                    *id,
                    BackendValue {
                        addr: addr16(b.addr.ip()),
                        port: b.addr.port().to_be(),
                        flags,
                        _pad: 0,
                    },
                );
            }
            let eligible: Vec<u32> = ids
                .iter()
                .filter(|(_, b)| !b.terminating)
                .map(|(id, _)| *id)
                .collect();
            for (net, bits) in &svc.source_ranges {
                let (addr, v4) = match net {
                    std::net::IpAddr::V4(a) => (v4_mapped(mask(a.octets(), *bits)), true),
                    std::net::IpAddr::V6(a) => (mask(a.octets(), *bits), false),
                };
                let key = RangeKey {
                    service: sid.to_be_bytes(),
                    addr,
                };
                image
                    .ranges
                    .insert((range_prefix_len(v4, *bits as u32), key));
            }
            image
                .maglev
                .insert(sid, maglev_table(svc, &eligible, table_size));
            image
                .services
                .insert(key, service_value(sid, svc, eligible.len() as u32));
        }
        // Whatever is no longer used is freed (after this sync).
        for (k, id) in std::mem::take(&mut self.services) {
            if !used_services.contains_key(&k) {
                self.free_services.insert(id);
            }
        }
        for (k, id) in std::mem::take(&mut self.backends) {
            if !used_backends.contains_key(&k) {
                self.free_backends.insert(id);
            }
        }
        self.free_services.extend(free_s);
        self.free_backends.extend(free_b);
        self.services = used_services;
        self.backends = used_backends;
        (image, errors)
    }
}

/// `addr` with the bits past `bits` cleared.
fn mask<const N: usize>(mut addr: [u8; N], bits: u8) -> [u8; N] {
    for (i, b) in addr.iter_mut().enumerate() {
        let keep = (bits as usize).saturating_sub(i * 8).min(8);
        *b &= (0xff00u16 >> keep) as u8;
    }
    addr
}

fn service_value(id: u32, svc: &L4Service, eligible: u32) -> ServiceValue {
    let mut flags = 0;
    if svc.local_policy {
        flags |= SVC_LOCAL_POLICY;
    }
    if svc.affinity_timeout.is_some() {
        flags |= SVC_CLIENT_AFFINITY;
    }
    if !svc.source_ranges.is_empty() {
        flags |= SVC_SOURCE_RANGES;
    }
    ServiceValue {
        id,
        backend_count: eligible,
        flags,
        affinity_timeout: svc.affinity_timeout.unwrap_or(0),
    }
}

/// The Maglev table of a service over its eligible backends, keyed by each
/// backend's address and port so every node builds the same table.
fn maglev_table(svc: &L4Service, eligible_ids: &[u32], size: u32) -> Vec<u32> {
    let eligible: Vec<_> = svc.eligible().collect();
    let keys: Vec<u64> = eligible
        .iter()
        .map(|b| {
            let mut k = addr16(b.addr.ip()).to_vec();
            k.extend_from_slice(&b.addr.port().to_be_bytes());
            maglev::hash64(0, &k)
        })
        .collect();
    let mut table = vec![NO_BACKEND; size as usize];
    let mut cursors = vec![maglev::Cursor::default(); keys.len()];
    maglev::populate(&keys, &mut table, &mut cursors);
    table
        .into_iter()
        .map(|i| eligible_ids.get(i as usize).copied().unwrap_or(NO_BACKEND))
        .collect()
}

/// The writes that turn `old` into `new`, in the safe order.
pub fn plan(old: &MapImage, new: &MapImage) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for (id, b) in &new.backends {
        if old.backends.get(id) != Some(b) {
            ops.push(MapOp::PutBackend(*id, *b));
        }
    }
    for (id, t) in &new.maglev {
        if old.maglev.get(id) != Some(t) {
            ops.push(MapOp::PutMaglev(*id, t.clone()));
        }
    }
    for (len, k) in new.ranges.difference(&old.ranges) {
        ops.push(MapOp::PutRange(*len, *k));
    }
    // Flags only grow before the services change...
    for (port, flags) in &new.ports {
        let merged = flags | old.ports.get(port).copied().unwrap_or(0);
        if old.ports.get(port) != Some(&merged) {
            ops.push(MapOp::PutPort(*port, merged));
        }
    }
    for (k, v) in &new.services {
        if old.services.get(k) != Some(v) {
            ops.push(MapOp::PutService(*k, *v));
        }
    }
    for k in old.services.keys() {
        if !new.services.contains_key(k) {
            ops.push(MapOp::DeleteService(*k));
        }
    }
    for (len, k) in old.ranges.difference(&new.ranges) {
        ops.push(MapOp::DeleteRange(*len, *k));
    }
    // ...and shrink to what the new services need once the old ones are gone.
    for (port, old_flags) in &old.ports {
        let want = new.ports.get(port).copied().unwrap_or(0);
        if want != (old_flags | want) {
            ops.push(MapOp::PutPort(*port, want));
        }
    }
    for id in old.maglev.keys() {
        if !new.maglev.contains_key(id) {
            ops.push(MapOp::ClearMaglev(*id));
        }
    }
    for id in old.backends.keys() {
        if !new.backends.contains_key(id) {
            ops.push(MapOp::DeleteBackend(*id));
        }
    }
    ops
}

#[cfg(test)]
mod tests;
