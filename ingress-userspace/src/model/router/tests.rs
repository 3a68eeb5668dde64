use proptest::prelude::*;

use super::*;

fn b(i: usize) -> RouteTarget {
    RouteTarget::Backend(BackendId(i))
}

fn router(rules: &[(Option<&str>, PathKind, &str, usize)], default: Option<usize>) -> Router {
    let mut rb = RouterBuilder::default();
    for (host, kind, path, id) in rules {
        rb.add(*host, *kind, path, BackendId(*id));
    }
    if let Some(d) = default {
        rb.set_default(BackendId(d));
    }
    rb.build()
}

use PathKind::{Exact, Prefix};

#[test]
fn prefix_is_element_wise_and_ignores_trailing_slash() {
    let r = router(
        &[(None, Prefix, "/foo", 1), (None, Prefix, "/aaa/bbb/", 2)],
        None,
    );
    assert_eq!(r.route(None, "/foo"), b(1));
    assert_eq!(r.route(None, "/foo/"), b(1));
    assert_eq!(r.route(None, "/foo/bar"), b(1));
    assert_eq!(r.route(None, "/foobar"), RouteTarget::NotFound);
    assert_eq!(r.route(None, "/FOO"), RouteTarget::NotFound);
    assert_eq!(r.route(None, "/aaa/bbb"), b(2));
    assert_eq!(r.route(None, "/aaa/bbb/"), b(2));
    assert_eq!(r.route(None, "/aaa/bbbccc"), RouteTarget::NotFound);
}

#[test]
fn longest_prefix_wins_regardless_of_order() {
    let r = router(
        &[
            (None, Prefix, "/aaa", 1),
            (None, Prefix, "/aaa/bbb", 2),
            (None, Prefix, "/", 3),
        ],
        None,
    );
    assert_eq!(r.route(None, "/aaa/bbb/ccc"), b(2));
    assert_eq!(r.route(None, "/aaa/ccc"), b(1));
    assert_eq!(r.route(None, "/aaaccc"), b(3));
    assert_eq!(r.route(None, "/"), b(3));
}

#[test]
fn exact_is_byte_for_byte_and_beats_prefix() {
    let r = router(
        &[
            (None, Prefix, "/foo", 1),
            (None, Exact, "/foo", 2),
            (None, Exact, "/bar/", 3),
        ],
        None,
    );
    assert_eq!(r.route(None, "/foo"), b(2));
    assert_eq!(r.route(None, "/foo/"), b(1));
    assert_eq!(r.route(None, "/bar/"), b(3));
    assert_eq!(r.route(None, "/bar"), RouteTarget::NotFound);
}

#[test]
fn hosts_exact_then_wildcard_of_one_label_then_hostless() {
    let r = router(
        &[
            (Some("foo.bar.com"), Prefix, "/", 1),
            (Some("*.foo.com"), Prefix, "/", 2),
            (None, Prefix, "/", 3),
        ],
        None,
    );
    assert_eq!(r.route(Some("foo.bar.com"), "/"), b(1));
    assert_eq!(r.route(Some("bar.foo.com"), "/x"), b(2));
    assert_eq!(r.route(Some("baz.bar.foo.com"), "/"), b(3));
    assert_eq!(r.route(Some("foo.com"), "/"), b(3));
    assert_eq!(r.route(Some("other"), "/"), b(3));
    assert_eq!(r.route(None, "/"), b(3));
}

#[test]
fn a_matched_host_without_matching_path_goes_to_the_default_backend() {
    let r = router(
        &[(Some("a.com"), Exact, "/x", 1), (None, Prefix, "/", 2)],
        Some(9),
    );
    assert_eq!(r.route(Some("a.com"), "/y"), b(9));
    let r = router(&[(Some("a.com"), Exact, "/x", 1)], None);
    assert_eq!(r.route(Some("a.com"), "/y"), RouteTarget::NotFound);
    assert_eq!(r.route(Some("b.com"), "/x"), RouteTarget::NotFound);
}

#[test]
fn default_backend_catches_everything_else() {
    let r = router(&[], Some(4));
    assert_eq!(r.route(Some("my-host"), "/sub-path"), b(4));
    assert_eq!(r.route(None, "/"), b(4));
}

#[test]
fn first_rule_for_the_same_key_wins() {
    let mut rb = RouterBuilder::default();
    assert!(rb.add(Some("A.com"), Prefix, "/x/", BackendId(1)));
    assert!(!rb.add(Some("a.com"), Prefix, "/x", BackendId(2)));
    assert!(rb.add(Some("a.com"), Exact, "/x", BackendId(3)));
    assert!(!rb.add(Some("a.com"), Exact, "/x", BackendId(4)));
    assert!(rb.set_default(BackendId(5)));
    assert!(!rb.set_default(BackendId(6)));
    let r = rb.build();
    assert_eq!(r.route(Some("a.com"), "/x/y"), b(1));
    assert_eq!(r.route(Some("a.com"), "/x"), b(3));
    assert_eq!(r.route(Some("a.com"), "/z"), b(5));
}

#[test]
fn request_hosts_are_normalized() {
    assert_eq!(
        normalize_request_host("Foo.Bar.com:8080").as_deref(),
        Some("foo.bar.com")
    );
    assert_eq!(
        normalize_request_host("foo.bar.com.").as_deref(),
        Some("foo.bar.com")
    );
    assert_eq!(
        normalize_request_host("[fd00::1]:80").as_deref(),
        Some("[fd00::1]")
    );
    assert_eq!(
        normalize_request_host("198.18.0.1").as_deref(),
        Some("198.18.0.1")
    );
    assert_eq!(normalize_request_host("a b"), None);
    assert_eq!(normalize_request_host("host:port"), None);
    assert_eq!(normalize_request_host("x/y"), None);
    assert_eq!(normalize_request_host("[fd00::1]x"), None);
}

// --- property test against a slow, obviously-correct reference ---------

#[derive(Clone, Debug)]
struct Rule {
    host: Option<String>,
    kind: PathKind,
    path: String,
}

fn segments(p: &str) -> Vec<&str> {
    p.split('/').filter(|s| !s.is_empty()).collect()
}

/// Straight from the Ingress v1 text, by scanning every rule.
fn reference(rules: &[Rule], default: Option<usize>, host: &str, path: &str) -> RouteTarget {
    let host = host.to_ascii_lowercase();
    let host_matches_exact = |r: &Rule| {
        r.host
            .as_deref()
            .is_some_and(|h| !h.starts_with("*.") && h.eq_ignore_ascii_case(&host))
    };
    let host_matches_wild = |r: &Rule| {
        r.host.as_deref().is_some_and(|h| {
            h.strip_prefix("*.").is_some_and(|suffix| {
                let labels: Vec<&str> = host.split('.').collect();
                labels.len() >= 2
                    && !labels[0].is_empty()
                    && labels[1..].join(".").eq_ignore_ascii_case(suffix)
            })
        })
    };
    let candidates: Vec<(usize, &Rule)> = {
        let exact: Vec<_> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| host_matches_exact(r))
            .collect();
        if !exact.is_empty() {
            exact
        } else {
            let wild: Vec<_> = rules
                .iter()
                .enumerate()
                .filter(|(_, r)| host_matches_wild(r))
                .collect();
            if !wild.is_empty() {
                wild
            } else {
                rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.host.is_none())
                    .collect()
            }
        }
    };
    if let Some((i, _)) = candidates
        .iter()
        .find(|(_, r)| r.kind == PathKind::Exact && r.path == path)
    {
        return b(*i);
    }
    let req = segments(path);
    let mut best: Option<(usize, usize)> = None; // (segments, rule index)
    for (i, r) in &candidates {
        if r.kind != PathKind::Prefix {
            continue;
        }
        let pre = segments(&r.path);
        if pre.len() <= req.len() && pre[..] == req[..pre.len()] {
            // Longest wins; among equal ones the first rule.
            if best.is_none_or(|(n, _)| pre.len() > n) {
                best = Some((pre.len(), *i));
            }
        }
    }
    match (best, default) {
        (Some((_, i)), _) => b(i),
        (None, Some(d)) => b(d),
        (None, None) => RouteTarget::NotFound,
    }
}

fn arb_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "A"]), 0..4),
        any::<bool>(),
    )
        .prop_map(|(segs, slash)| {
            let mut p = format!("/{}", segs.join("/"));
            if slash && !segs.is_empty() {
                p.push('/');
            }
            p
        })
}

fn arb_host() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "x.com",
        "a.x.com",
        "b.a.x.com",
        "X.com",
        "y.org",
        "a.y.org",
    ])
    .prop_map(String::from)
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        prop::option::of(prop::sample::select(vec![
            "x.com", "a.x.com", "*.x.com", "*.y.org", "y.org",
        ])),
        prop::bool::ANY,
        arb_path(),
    )
        .prop_map(|(host, exact, path)| Rule {
            host: host.map(String::from),
            kind: if exact {
                PathKind::Exact
            } else {
                PathKind::Prefix
            },
            path,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn router_agrees_with_the_reference(
        rules in prop::collection::vec(arb_rule(), 0..8),
        default in prop::option::of(100usize..101),
        host in arb_host(),
        path in arb_path(),
    ) {
        // Duplicate keys: the reference's "first rule" semantics must match
        // the builder's first-wins, so drop later duplicates the same way.
        let mut rb = RouterBuilder::default();
        let mut kept = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if rb.add(r.host.as_deref(), r.kind, &r.path, BackendId(i)) {
                kept.push((i, r.clone()));
            }
        }
        if let Some(d) = default {
            rb.set_default(BackendId(d));
        }
        let router = rb.build();
        // The reference scans all rules but a dropped duplicate can never win
        // over the one kept before it, so index mapping stays exact.
        let want = reference(&rules, default, &host, &path);
        let got = router.route(normalize_request_host(&host).as_deref(), &path);
        prop_assert_eq!(got, want, "rules {:?} host {} path {}", kept, host, path);
    }
}
