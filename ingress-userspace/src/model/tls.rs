//! The TLS table of a snapshot: which certificate answers which SNI name,
//! compiled from `kubernetes.io/tls` Secrets named by Ingress `spec.tls`.
//!
//! Pure like the rest of `model`: the clock comes in as an argument, and the
//! previous table comes in so that a Secret that turned bad keeps serving
//! the last good certificate for its hosts (and so that unchanged Secrets
//! are not parsed again).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Secret, networking::v1::Ingress};
use rustls::{crypto::CryptoProvider, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{ClusterState, Diagnostic, ObjectKey, compile::validate_host, reason};

/// The Secret keys a TLS Secret carries.
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// One usable certificate and key, loaded from a Secret.
pub struct ServedCert {
    /// The Secret it came from.
    pub secret: ObjectKey,
    /// Chain and signing key, as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// notAfter of the leaf certificate, in seconds since the Unix epoch.
    pub not_after: i64,
    /// DNS names the leaf certificate covers (SANs, else the CN).
    pub names: Vec<String>,
    /// The PEM text it was loaded from, to reuse the parse while the
    /// Secret does not change.
    source: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCert")
            .field("secret", &self.secret)
            .field("not_after", &self.not_after)
            .field("names", &self.names)
            .finish()
    }
}

impl ServedCert {
    /// Whether the certificate covers `host` (a normalized SNI name or a
    /// `*.suffix` pattern).
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_covers(n, host))
    }
}

/// Whether certificate name `name` (maybe `*.x`) covers `host` (maybe `*.x`).
fn name_covers(name: &str, host: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name == host {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((first, rest))) => !first.is_empty() && first != "*" && rest == suffix,
        _ => false,
    }
}

/// Why a Secret cannot serve, with the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretProblem {
    pub field: String,
    pub message: String,
}

impl SecretProblem {
    fn new(field: &str, message: impl Into<String>) -> Self {
        SecretProblem {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// The bytes of `key` in a Secret: `stringData` wins over `data`, as the API
/// server merges them.
fn secret_bytes<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    if let Some(s) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(s.as_bytes());
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

/// Loads the certificate and key of a TLS Secret, checking that they parse,
/// match, and that the certificate has not expired at `now` (Unix seconds).
pub fn load_secret(
    key: &ObjectKey,
    secret: &Secret,
    provider: &CryptoProvider,
    now: i64,
) -> Result<ServedCert, SecretProblem> {
    let field = |k: &str| format!("data[{k}]");
    let crt = secret_bytes(secret, TLS_CRT)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| SecretProblem::new(&field(TLS_CRT), "missing or empty"))?;
    let pkey = secret_bytes(secret, TLS_KEY)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| SecretProblem::new(&field(TLS_KEY), "missing or empty"))?;
    parse_pair(key, crt, pkey, provider, now)
}

fn parse_pair(
    key: &ObjectKey,
    crt: &[u8],
    pkey: &[u8],
    provider: &CryptoProvider,
    now: i64,
) -> Result<ServedCert, SecretProblem> {
    let crt_field = format!("data[{TLS_CRT}]");
    let key_field = format!("data[{TLS_KEY}]");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<_, _>>()
        .map_err(|e| SecretProblem::new(&crt_field, format!("not PEM certificates: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| SecretProblem::new(&crt_field, "no CERTIFICATE block in the PEM text"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| SecretProblem::new(&crt_field, format!("not an X.509 certificate: {e}")))?;
    let validity = parsed.validity();
    let not_after = validity.not_after.timestamp();
    if not_after < now {
        return Err(SecretProblem::new(
            &crt_field,
            format!("certificate expired at {}", validity.not_after),
        ));
    }
    let mut names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let private = PrivateKeyDer::from_pem_slice(pkey)
        .map_err(|e| SecretProblem::new(&key_field, format!("no usable PEM private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => SecretProblem::new(
            &key_field,
            format!("the private key does not match the certificate in {TLS_CRT}"),
        ),
        other => SecretProblem::new(&key_field, format!("unusable private key: {other}")),
    })?;
    Ok(ServedCert {
        secret: key.clone(),
        key: Arc::new(certified),
        not_after,
        names,
        source: (crt.to_vec(), pkey.to_vec()),
    })
}

/// Which certificate answers which SNI name.
#[derive(Clone, Debug, Default)]
pub struct TlsTable {
    /// Exact host -> certificate.
    exact: HashMap<String, Arc<ServedCert>>,
    /// `*.suffix` hosts, keyed by the suffix.
    wildcard: HashMap<String, Arc<ServedCert>>,
    /// `--default-ssl-certificate`, when given and usable.
    pub default: Option<Arc<ServedCert>>,
    /// Host patterns some Ingress lists under `spec.tls` (whether or not its
    /// Secret is usable): plain HTTP to these is redirected.
    tls_hosts: std::collections::HashSet<String>,
    /// The suffixes of the `*.suffix` ones among them, for lookups without
    /// allocating.
    tls_wildcards: std::collections::HashSet<String>,
}

impl PartialEq for TlsTable {
    fn eq(&self, other: &Self) -> bool {
        let map = |m: &HashMap<String, Arc<ServedCert>>| -> BTreeMap<String, ObjectKey> {
            m.iter()
                .map(|(k, v)| (k.clone(), v.secret.clone()))
                .collect()
        };
        map(&self.exact) == map(&other.exact)
            && map(&self.wildcard) == map(&other.wildcard)
            && self.default.as_ref().map(|d| &d.secret) == other.default.as_ref().map(|d| &d.secret)
            && self.tls_hosts == other.tls_hosts
    }
}

/// The lowercase host of an SNI name, without a trailing dot.
fn normalize_sni(sni: &str) -> String {
    sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase()
}

impl TlsTable {
    /// The certificate for an SNI name: exact host, then a wildcard covering
    /// its first label, else the default certificate (if any).
    pub fn resolve(&self, sni: Option<&str>) -> Option<&Arc<ServedCert>> {
        sni.and_then(|s| self.lookup(&normalize_sni(s)))
            .or(self.default.as_ref())
    }

    /// The certificate configured for a normalized host, without default.
    pub fn lookup(&self, host: &str) -> Option<&Arc<ServedCert>> {
        if let Some(c) = self.exact.get(host) {
            return Some(c);
        }
        let (first, rest) = host.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(rest)
    }

    /// The certificate held for a host pattern (`foo.com` or `*.foo.com`).
    fn by_pattern(&self, pattern: &str) -> Option<&Arc<ServedCert>> {
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcard.get(suffix),
            None => self.exact.get(pattern),
        }
    }

    /// Whether some Ingress lists `host` (normalized) under `spec.tls`,
    /// exactly or by a wildcard covering it.
    pub fn has_host(&self, host: &str) -> bool {
        if self.tls_hosts.contains(host) {
            return true;
        }
        match host.split_once('.') {
            Some((first, rest)) if !first.is_empty() => self.tls_wildcards.contains(rest),
            _ => false,
        }
    }

    /// Every certificate served, once each, by Secret: for listings and the
    /// expiry metric.
    pub fn certificates(&self) -> Vec<Arc<ServedCert>> {
        let mut by_secret: BTreeMap<ObjectKey, Arc<ServedCert>> = BTreeMap::new();
        for c in self
            .exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.default.iter())
        {
            by_secret
                .entry(c.secret.clone())
                .or_insert_with(|| c.clone());
        }
        by_secret.into_values().collect()
    }

    /// (host pattern, Secret) for every configured host, sorted.
    pub fn hosts(&self) -> Vec<(String, ObjectKey)> {
        let mut v: Vec<(String, ObjectKey)> = self
            .exact
            .iter()
            .map(|(h, c)| (h.clone(), c.secret.clone()))
            .chain(
                self.wildcard
                    .iter()
                    .map(|(h, c)| (format!("*.{h}"), c.secret.clone())),
            )
            .collect();
        v.sort();
        v
    }

    /// Records that some Ingress lists `pattern` under `spec.tls`.
    fn add_tls_host(&mut self, pattern: String) {
        if let Some(suffix) = pattern.strip_prefix("*.") {
            self.tls_wildcards.insert(suffix.to_string());
        }
        self.tls_hosts.insert(pattern);
    }

    fn insert(&mut self, pattern: &str, cert: Arc<ServedCert>) {
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_string(), cert),
            None => self.exact.insert(pattern.to_string(), cert),
        };
    }
}

/// Loads each Secret once per compile, reusing the previous table's parse
/// when its bytes did not change.
struct Loader<'a> {
    state: &'a ClusterState,
    previous: HashMap<ObjectKey, Arc<ServedCert>>,
    loaded: HashMap<ObjectKey, Result<Arc<ServedCert>, SecretProblem>>,
    provider: CryptoProvider,
    now: i64,
}

impl Loader<'_> {
    /// The Secret's certificate, `Ok(None)` when the Secret does not exist;
    /// a problem is reported (once per Secret) by the caller.
    fn get(&mut self, key: &ObjectKey) -> Option<(Result<Arc<ServedCert>, SecretProblem>, bool)> {
        if let Some(r) = self.loaded.get(key) {
            return Some((r.clone(), false));
        }
        let secret = self.state.secrets.get(key)?;
        let reused = self.previous.get(key).filter(|prev| {
            let crt = secret_bytes(secret, TLS_CRT).unwrap_or_default();
            let pkey = secret_bytes(secret, TLS_KEY).unwrap_or_default();
            prev.source.0 == crt && prev.source.1 == pkey && prev.not_after >= self.now
        });
        let result = match reused {
            Some(prev) => Ok(prev.clone()),
            None => load_secret(key, secret, &self.provider, self.now).map(Arc::new),
        };
        self.loaded.insert(key.clone(), result.clone());
        Some((result, true))
    }
}

/// What compile needs for TLS besides the state.
pub struct TlsInputs<'a> {
    /// `--default-ssl-certificate`.
    pub default_certificate: Option<&'a ObjectKey>,
    /// The table being replaced.
    pub previous: Option<&'a TlsTable>,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// Builds the TLS table from our Ingresses, oldest first.
pub fn compile_tls(
    state: &ClusterState,
    ours: &[(ObjectKey, &Ingress)],
    inputs: &TlsInputs<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> TlsTable {
    let previous = inputs
        .previous
        .map(|p| {
            p.certificates()
                .into_iter()
                .map(|c| (c.secret.clone(), c))
                .collect()
        })
        .unwrap_or_default();
    let mut loader = Loader {
        state,
        previous,
        loaded: HashMap::new(),
        provider: rustls::crypto::ring::default_provider(),
        now: inputs.now,
    };
    let mut table = TlsTable::default();
    // Host pattern -> (Ingress, Secret) that claimed it first.
    let mut claims: HashMap<String, (ObjectKey, ObjectKey)> = HashMap::new();
    let keep_previous = |pattern: &str| {
        inputs
            .previous
            .and_then(|p| p.by_pattern(pattern))
            .filter(|c| c.not_after >= inputs.now)
            .cloned()
    };

    for (ing_key, ing) in ours {
        let object = format!("Ingress {ing_key}");
        let Some(spec) = ing.spec.as_ref() else {
            continue;
        };
        let rule_hosts: Vec<String> = spec
            .rules
            .iter()
            .flatten()
            .filter_map(|r| r.host.as_deref())
            .filter(|h| !h.is_empty() && validate_host(h).is_ok())
            .map(str::to_ascii_lowercase)
            .collect();
        for (ti, tls) in spec.tls.iter().flatten().enumerate() {
            let Some(name) = tls.secret_name.as_deref().filter(|n| !n.is_empty()) else {
                diagnostics.push(
                    Diagnostic::error(
                        &object,
                        format!("spec.tls[{ti}].secretName"),
                        "missing: no certificate for these hosts (the default one answers)",
                    )
                    .with_reason(reason::TLS_SECRET_MISSING),
                );
                // The hosts still ask for HTTPS, so redirects apply.
                add_hosts_without_certificate(&mut table, tls.hosts.iter().flatten());
                continue;
            };
            // secretName is a name in the Ingress's own namespace; a
            // `namespace/name` form would let an Ingress serve another
            // namespace's certificate and key, so it is refused and no
            // Secret is looked up for it.
            if let Some((other_ns, _)) = name.split_once('/') {
                diagnostics.push(
                    Diagnostic::error(
                        &object,
                        format!("spec.tls[{ti}].secretName"),
                        format!(
                            "'{name}' names a Secret in namespace '{other_ns}': only Secrets of the Ingress's namespace ({}) are used; no certificate for these hosts (the default one answers)",
                            ing_key.namespace
                        ),
                    )
                    .with_reason(reason::TLS_SECRET_CROSS_NAMESPACE),
                );
                add_hosts_without_certificate(&mut table, tls.hosts.iter().flatten());
                continue;
            }
            let secret_key = ObjectKey::new(&ing_key.namespace, name);
            // Without hosts, the entry covers the Ingress's rule hosts.
            let hosts: Vec<(String, String)> = match tls.hosts.as_ref().filter(|h| !h.is_empty()) {
                Some(hs) => hs
                    .iter()
                    .enumerate()
                    .map(|(hi, h)| (format!("spec.tls[{ti}].hosts[{hi}]"), h.clone()))
                    .collect(),
                None => rule_hosts
                    .iter()
                    .map(|h| (format!("spec.tls[{ti}]"), h.clone()))
                    .collect(),
            };
            let cert = match loader.get(&secret_key) {
                None => {
                    diagnostics.push(
                        Diagnostic::error(
                            &object,
                            format!("spec.tls[{ti}].secretName"),
                            format!("Secret {secret_key} not found"),
                        )
                        .with_reason(reason::TLS_SECRET_NOT_FOUND),
                    );
                    None
                }
                Some((Err(problem), first)) => {
                    if first {
                        diagnostics.push(Diagnostic::error(
                            format!("Secret {secret_key}"),
                            problem.field.clone(),
                            problem.message.clone(),
                        ));
                    }
                    // Said on the Ingress too, where its Event shows.
                    diagnostics.push(
                        Diagnostic::warning(
                            &object,
                            format!("spec.tls[{ti}].secretName"),
                            format!(
                                "Secret {secret_key} cannot serve: {}: {}",
                                problem.field, problem.message
                            ),
                        )
                        .with_reason(reason::TLS_SECRET_INVALID),
                    );
                    None
                }
                Some((Ok(cert), _)) => Some(cert),
            };
            for (field, host) in hosts {
                if let Err(why) = validate_host(&host) {
                    diagnostics.push(
                        Diagnostic::error(&object, field, why).with_reason(reason::INVALID_RULE),
                    );
                    continue;
                }
                let host = host.to_ascii_lowercase();
                table.add_tls_host(host.clone());
                if let Some((winner, winner_secret)) = claims.get(&host) {
                    if *winner_secret != secret_key {
                        diagnostics.push(Diagnostic::warning(
                            &object,
                            field,
                            format!(
                                "conflict lost: host {host} already takes its certificate from Secret {winner_secret} (older Ingress {winner})"
                            ),
                        ).with_reason(reason::CONFLICT_LOST));
                    }
                    continue;
                }
                claims.insert(host.clone(), (ing_key.clone(), secret_key.clone()));
                match &cert {
                    Some(c) => {
                        if !c.covers(&host) {
                            diagnostics.push(Diagnostic::warning(
                                &object,
                                field,
                                format!(
                                    "the certificate of Secret {secret_key} does not cover host {host} (it names {})",
                                    c.names.join(", ")
                                ),
                            ).with_reason(reason::TLS_CERTIFICATE_MISMATCH));
                        }
                        table.insert(&host, c.clone());
                    }
                    None => match keep_previous(&host) {
                        Some(prev) => {
                            diagnostics.push(Diagnostic::warning(
                                &object,
                                field,
                                format!(
                                    "host {host} keeps its previous certificate (from Secret {}) until Secret {secret_key} is fixed",
                                    prev.secret
                                ),
                            ));
                            table.insert(&host, prev);
                        }
                        None => diagnostics.push(Diagnostic::warning(
                            &object,
                            field,
                            format!("host {host} is served with the default certificate"),
                        )),
                    },
                }
            }
        }
    }

    if let Some(key) = inputs.default_certificate {
        let object = "--default-ssl-certificate";
        let loaded = match loader.get(key) {
            None => Err(format!("Secret {key} not found")),
            Some((Err(p), _)) => Err(format!("Secret {key} {}: {}", p.field, p.message)),
            Some((Ok(c), _)) => Ok(c),
        };
        table.default = match loaded {
            Ok(c) => Some(c),
            Err(why) => {
                let prev = inputs
                    .previous
                    .and_then(|p| p.default.clone())
                    .filter(|c| c.not_after >= inputs.now);
                let then = if prev.is_some() {
                    "the previous default certificate stays"
                } else {
                    "a self-signed certificate answers instead"
                };
                diagnostics.push(Diagnostic::error(object, "", format!("{why}; {then}")));
                prev
            }
        };
    }
    table
}

/// Hosts of a spec.tls entry that has no usable Secret name: they still
/// ask for HTTPS (redirects apply), and the default certificate answers.
fn add_hosts_without_certificate<'a>(
    table: &mut TlsTable,
    hosts: impl Iterator<Item = &'a String>,
) {
    for h in hosts {
        if validate_host(h).is_ok() {
            table.add_tls_host(h.to_ascii_lowercase());
        }
    }
}

#[cfg(test)]
mod tests;
