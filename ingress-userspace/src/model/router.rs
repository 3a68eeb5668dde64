//! Host and path matching by Ingress v1 rules.
//!
//! - Hosts: exact (case-insensitive), then `*.suffix` covering exactly one
//!   label, then the rules without a host. The most specific host that has
//!   rules owns the request: when none of its paths match, the request goes
//!   to the default backend, not to a less specific host's rules.
//! - Paths: `Exact` matches the path byte for byte; `Prefix` matches whole
//!   `/`-separated elements with a trailing slash ignored (`/foo` matches
//!   `/foo`, `/foo/` and `/foo/bar`, not `/foobar`), longest prefix first.
//!   An exact match beats any prefix. `ImplementationSpecific` is Prefix.

use std::collections::HashMap;

use super::BackendId;

/// What a request is routed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    Backend(BackendId),
    /// No rule and no defaultBackend: the built-in 404.
    NotFound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKind {
    Exact,
    Prefix,
}

/// The paths of one host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PathTable {
    exact: HashMap<String, BackendId>,
    /// Normalized prefixes (no trailing slash, `""` for `/`), longest first.
    prefixes: Vec<(String, BackendId)>,
}

impl PathTable {
    fn lookup(&self, path: &str) -> Option<BackendId> {
        if let Some(id) = self.exact.get(path) {
            return Some(*id);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, id)| *id)
    }

    /// Every (kind, path) in the table, for listings.
    pub fn entries(&self) -> Vec<(PathKind, String, BackendId)> {
        let mut v: Vec<_> = self
            .exact
            .iter()
            .map(|(p, id)| (PathKind::Exact, p.clone(), *id))
            .chain(self.prefixes.iter().map(|(p, id)| {
                let shown = if p.is_empty() {
                    "/".to_string()
                } else {
                    p.clone()
                };
                (PathKind::Prefix, shown, *id)
            }))
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// Whether normalized `prefix` matches `path` element-wise.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// A Prefix path as compared: without trailing slashes, `""` for `/`.
pub fn normalize_prefix(path: &str) -> String {
    path.trim_end_matches('/').to_string()
}

/// The routing table of a snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Router {
    exact_hosts: HashMap<String, PathTable>,
    /// Keyed by what follows `*.` (`*.foo.com` -> `foo.com`).
    wildcard_hosts: HashMap<String, PathTable>,
    any_host: Option<PathTable>,
    default_backend: Option<BackendId>,
}

/// The host part of a Host header or :authority, lowercased, without port
/// and trailing dot. `None` for a value that is not a plausible host.
pub fn normalize_request_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        &raw[..end + 2]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':'));
    ok.then(|| host.to_ascii_lowercase())
}

impl Router {
    /// Routes a request by its normalized host (`None`: no usable Host) and
    /// path (without query).
    pub fn route(&self, host: Option<&str>, path: &str) -> RouteTarget {
        let table = host
            .and_then(|h| self.host_table(h))
            .or(self.any_host.as_ref());
        let hit = table.and_then(|t| t.lookup(path)).or(self.default_backend);
        hit.map_or(RouteTarget::NotFound, RouteTarget::Backend)
    }

    fn host_table(&self, host: &str) -> Option<&PathTable> {
        if let Some(t) = self.exact_hosts.get(host) {
            return Some(t);
        }
        let (first, rest) = host.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard_hosts.get(rest)
    }

    /// Whether `host` (normalized) is named by some rule: bounds metric labels.
    pub fn knows_host(&self, host: &str) -> bool {
        self.exact_hosts.contains_key(host)
    }

    pub fn default_backend(&self) -> Option<BackendId> {
        self.default_backend
    }

    /// (host pattern, table) for every host, `*` for the host-less rules.
    pub fn tables(&self) -> Vec<(String, &PathTable)> {
        let mut v: Vec<(String, &PathTable)> = self
            .exact_hosts
            .iter()
            .map(|(h, t)| (h.clone(), t))
            .chain(
                self.wildcard_hosts
                    .iter()
                    .map(|(h, t)| (format!("*.{h}"), t)),
            )
            .chain(self.any_host.iter().map(|t| ("*".to_string(), t)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Accumulates rules; the first rule for a (host, kind, path) wins, so the
/// caller adds them in precedence order.
#[derive(Debug, Default)]
pub struct RouterBuilder {
    router: Router,
}

impl RouterBuilder {
    /// Adds a rule. `host` is `None` for a rule without host, else an exact
    /// host or `*.suffix` (already validated, any case). Returns false when
    /// the same host, kind and path already had a rule.
    pub fn add(
        &mut self,
        host: Option<&str>,
        kind: PathKind,
        path: &str,
        backend: BackendId,
    ) -> bool {
        let table = match host.map(str::to_ascii_lowercase) {
            None => self.router.any_host.get_or_insert_with(PathTable::default),
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self
                    .router
                    .wildcard_hosts
                    .entry(suffix.to_string())
                    .or_default(),
                None => self.router.exact_hosts.entry(h).or_default(),
            },
        };
        match kind {
            PathKind::Exact => {
                if table.exact.contains_key(path) {
                    return false;
                }
                table.exact.insert(path.to_string(), backend);
            }
            PathKind::Prefix => {
                let p = normalize_prefix(path);
                if table.prefixes.iter().any(|(q, _)| *q == p) {
                    return false;
                }
                table.prefixes.push((p, backend));
            }
        }
        true
    }

    /// Sets the default backend unless one is set; returns whether it took.
    pub fn set_default(&mut self, backend: BackendId) -> bool {
        if self.router.default_backend.is_some() {
            return false;
        }
        self.router.default_backend = Some(backend);
        true
    }

    pub fn build(mut self) -> Router {
        let sort = |t: &mut PathTable| {
            t.prefixes
                .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)))
        };
        self.router.exact_hosts.values_mut().for_each(sort);
        self.router.wildcard_hosts.values_mut().for_each(sort);
        self.router.any_host.iter_mut().for_each(sort);
        self.router
    }
}

#[cfg(test)]
mod tests;
