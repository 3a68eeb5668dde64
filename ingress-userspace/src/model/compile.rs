//! `compile`: ClusterState -> Snapshot, pure and deterministic.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    networking::v1::{Ingress, IngressBackend, IngressServiceBackend},
};

use super::{
    Backend, BackendId, ClusterState, Diagnostic, Endpoint, ObjectKey, Snapshot, UpstreamProtocol,
    endpoints, l4, reason,
    router::{PathKind, RouterBuilder, normalize_prefix},
    snapshot::ServedIngress,
    tls,
};

/// The `spec.controller` value of IngressClasses this agent implements.
pub const CONTROLLER_NAME: &str = "ingress-ebpf.dev/controller";
/// The annotation that makes an IngressClass the cluster default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The pre-IngressClass annotation some Ingresses still carry.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// The IngressClass name this agent serves.
    pub ingress_class: String,
    /// This node's name, carried into the snapshot.
    pub node_name: String,
    /// The addresses NodePorts answer on.
    pub node_ips: Vec<std::net::IpAddr>,
    /// `--default-ssl-certificate`: the Secret served to SNI names no
    /// Ingress lists (a self-signed certificate otherwise).
    pub default_certificate: Option<ObjectKey>,
    /// Whether plain HTTP to a host with TLS is redirected when the Ingress
    /// does not say (ingress-nginx's `ssl-redirect`, default true).
    pub ssl_redirect: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            ingress_class: "ingress-ebpf".into(),
            node_name: String::new(),
            node_ips: Vec::new(),
            default_certificate: None,
            ssl_redirect: true,
        }
    }
}

/// Per-Ingress annotation: redirect plain HTTP to HTTPS when the host has TLS.
pub const SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/ssl-redirect";
/// Per-Ingress annotation: redirect plain HTTP to HTTPS even without TLS.
pub const FORCE_SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/force-ssl-redirect";

/// Per-Ingress annotation: how to talk to the pods (HTTP, HTTPS, GRPC, GRPCS).
pub const BACKEND_PROTOCOL_ANNOTATION: &str = "nginx.ingress.kubernetes.io/backend-protocol";

/// What an Ingress's annotations ask of the paths it defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PathPolicy {
    pub ssl_redirect: bool,
    pub force_ssl_redirect: bool,
    /// `backend-protocol`, when given.
    pub backend_protocol: Option<UpstreamProtocol>,
}

/// Compiles the whole state. Never fails: what cannot be served is left out
/// (or answers 503) and reported in `Snapshot::diagnostics`. Certificates
/// are checked against the clock; [`compile_at`] is the pure form.
pub fn compile(state: &ClusterState, opts: &CompileOptions) -> Snapshot {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    compile_at(state, opts, None, now)
}

/// [`compile`] at `now` (Unix seconds), after `previous`: a TLS Secret that
/// turned bad keeps the certificate `previous` served for its hosts, and
/// unchanged Secrets are not parsed again.
pub fn compile_at(
    state: &ClusterState,
    opts: &CompileOptions,
    previous: Option<&Snapshot>,
    now: i64,
) -> Snapshot {
    let mut c = Compiler {
        state,
        slices: endpoints::SliceIndex::new(state),
        backends: Vec::new(),
        backend_ids: HashMap::new(),
        problem_reasons: HashMap::new(),
        diagnostics: Vec::new(),
    };
    let ours = our_ingresses(state, opts, &mut c.diagnostics);
    let tls = tls::compile_tls(
        state,
        &ours,
        &tls::TlsInputs {
            default_certificate: opts.default_certificate.as_ref(),
            previous: previous.map(|p| &*p.tls),
            now,
        },
        &mut c.diagnostics,
    );
    let mut router = RouterBuilder::default();
    // Who holds each (host, kind, path) and the default backend, to name the
    // winner when a younger Ingress loses a conflict.
    let mut owners: HashMap<(Option<String>, PathKind, String), ObjectKey> = HashMap::new();
    let mut default_owner: Option<ObjectKey> = None;
    let mut served = Vec::new();

    for (key, ing) in ours {
        let object = format!("Ingress {key}");
        let Some(spec) = ing.spec.as_ref() else {
            c.diagnostics.push(
                Diagnostic::error(&object, "spec", "missing").with_reason(reason::INVALID_INGRESS),
            );
            continue;
        };
        let mut hosts = Vec::new();
        let policy = path_policy(ing, opts, &object, &mut c.diagnostics);
        if let Some(def) = &spec.default_backend
            && let Some(id) = c.backend(&key, def, policy, &object, "spec.defaultBackend")
        {
            if router.set_default(id) {
                default_owner = Some(key.clone());
            } else {
                let winner = default_owner
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                c.diagnostics.push(
                    Diagnostic::warning(
                        &object,
                        "spec.defaultBackend",
                        format!(
                            "ignored: the older Ingress {winner} already sets the default backend"
                        ),
                    )
                    .with_reason(reason::CONFLICT_LOST),
                );
            }
        }
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                None => None,
                Some(h) => match validate_host(h) {
                    Ok(()) => Some(h.to_ascii_lowercase()),
                    Err(why) => {
                        c.diagnostics.push(
                            Diagnostic::error(&object, format!("spec.rules[{ri}].host"), why)
                                .with_reason(reason::INVALID_RULE),
                        );
                        continue;
                    }
                },
            };
            hosts.push(host.clone().unwrap_or_else(|| "*".to_string()));
            let Some(http) = &rule.http else { continue };
            for (pi, p) in http.paths.iter().enumerate() {
                let field = format!("spec.rules[{ri}].http.paths[{pi}]");
                let path = p.path.as_deref().unwrap_or("/");
                let kind = match p.path_type.as_str() {
                    "Exact" => PathKind::Exact,
                    "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                    other => {
                        c.diagnostics.push(
                            Diagnostic::error(
                                &object,
                                format!("{field}.pathType"),
                                format!("'{other}' is not Exact, Prefix or ImplementationSpecific"),
                            )
                            .with_reason(reason::INVALID_RULE),
                        );
                        continue;
                    }
                };
                if !path.starts_with('/') {
                    c.diagnostics.push(
                        Diagnostic::error(
                            &object,
                            format!("{field}.path"),
                            format!("'{path}' must start with '/'"),
                        )
                        .with_reason(reason::INVALID_RULE),
                    );
                    continue;
                }
                let Some(id) = c.backend(
                    &key,
                    &p.backend,
                    policy,
                    &object,
                    &format!("{field}.backend"),
                ) else {
                    continue;
                };
                let norm = match kind {
                    PathKind::Exact => path.to_string(),
                    PathKind::Prefix => normalize_prefix(path),
                };
                let owner_key = (host.clone(), kind, norm);
                if router.add(host.as_deref(), kind, path, id) {
                    owners.insert(owner_key, key.clone());
                } else {
                    let winner = owners
                        .get(&owner_key)
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    c.diagnostics.push(Diagnostic::warning(
                        &object,
                        field,
                        format!(
                            "conflict lost: host {} path {path} ({kind:?}) is already served by the older Ingress {winner}",
                            host.as_deref().unwrap_or("*")
                        ),
                    ).with_reason(reason::CONFLICT_LOST));
                }
            }
        }
        hosts.sort();
        hosts.dedup();
        served.push(ServedIngress { key, hosts });
    }

    let l4 = l4::compile_l4(
        state,
        &l4::L4Options {
            node_name: opts.node_name.clone(),
            node_ips: opts.node_ips.clone(),
        },
        &mut c.diagnostics,
    );
    let router = router.build();
    let host_labels = router
        .tables()
        .into_iter()
        .map(|(h, _)| h)
        .filter(|h| router.knows_host(h))
        .map(|h| (h.clone(), Arc::from(h.as_str())))
        .collect();
    Snapshot {
        router: Arc::new(router),
        host_labels: Arc::new(host_labels),
        l4: Arc::new(l4),
        tls: Arc::new(tls),
        backends: c.backends.into_iter().map(Arc::new).collect(),
        served: Arc::new(served),
        diagnostics: Arc::new(c.diagnostics),
        node_name: opts.node_name.clone(),
    }
}

/// The annotations of `ing` that shape its paths; bad values are reported
/// and the default kept.
fn path_policy(
    ing: &Ingress,
    opts: &CompileOptions,
    object: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> PathPolicy {
    let annotations = ing.metadata.annotations.as_ref();
    let mut flag = |name: &str, default: bool| -> bool {
        match annotations.and_then(|a| a.get(name)).map(|v| v.trim()) {
            None => default,
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                diagnostics.push(
                    Diagnostic::warning(
                        object,
                        format!("metadata.annotations[{name}]"),
                        format!("'{other}' is not \"true\" or \"false\"; {default} is used"),
                    )
                    .with_reason(reason::INVALID_ANNOTATION),
                );
                default
            }
        }
    };
    let ssl_redirect = flag(SSL_REDIRECT_ANNOTATION, opts.ssl_redirect);
    let force_ssl_redirect = flag(FORCE_SSL_REDIRECT_ANNOTATION, false);
    let backend_protocol = match annotations
        .and_then(|a| a.get(BACKEND_PROTOCOL_ANNOTATION))
        .map(|v| v.trim().to_ascii_uppercase())
        .as_deref()
    {
        None => None,
        Some("HTTP") => Some(UpstreamProtocol::Http1),
        Some("HTTPS") => Some(UpstreamProtocol::Https),
        Some("GRPC") => Some(UpstreamProtocol::H2c),
        Some("GRPCS") => Some(UpstreamProtocol::H2s),
        Some(other) => {
            diagnostics.push(
                Diagnostic::warning(
                    object,
                    format!("metadata.annotations[{BACKEND_PROTOCOL_ANNOTATION}]"),
                    format!("'{other}' is not HTTP, HTTPS, GRPC or GRPCS; HTTP is used"),
                )
                .with_reason(reason::INVALID_ANNOTATION),
            );
            None
        }
    };
    PathPolicy {
        ssl_redirect,
        force_ssl_redirect,
        backend_protocol,
    }
}

/// The protocol a Service port's appProtocol names, if one we speak.
fn app_protocol(sp: &ServicePort) -> Option<UpstreamProtocol> {
    match sp.app_protocol.as_deref()? {
        "kubernetes.io/h2c" | "h2c" | "grpc" => Some(UpstreamProtocol::H2c),
        "https" | "kubernetes.io/https" => Some(UpstreamProtocol::Https),
        "http" | "kubernetes.io/http" => Some(UpstreamProtocol::Http1),
        _ => None,
    }
}

/// A host as the Ingress spec allows it: a DNS name, optionally with a
/// leading `*.` wildcard label; no IP addresses, no port.
pub fn validate_host(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "'{h}' is an IP address; Ingress hosts must be DNS names"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "'{h}' is not a valid DNS name (or *.name wildcard)"
        ));
    }
    Ok(())
}

/// Our Ingresses, oldest first (creationTimestamp, then namespace/name).
fn our_ingresses<'a>(
    state: &'a ClusterState,
    opts: &CompileOptions,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<(ObjectKey, &'a Ingress)> {
    let class = &opts.ingress_class;
    let our_class = state.ingress_classes.get(class);
    if let Some(ic) = our_class {
        let controller = ic
            .spec
            .as_ref()
            .and_then(|s| s.controller.as_deref())
            .unwrap_or("");
        if controller != CONTROLLER_NAME {
            diagnostics.push(Diagnostic::warning(
                format!("IngressClass {class}"),
                "spec.controller",
                format!("is '{controller}', not '{CONTROLLER_NAME}'; served anyway because --ingress-class names it"),
            ));
        }
    }
    let we_are_default = our_class.is_some_and(|ic| {
        ic.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .is_some_and(|v| v == "true")
    });
    let mut ours: Vec<(ObjectKey, &Ingress)> = state
        .ingresses
        .iter()
        .filter(|(_, ing)| {
            let named = ing
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.as_deref());
            let legacy = ing
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
                .map(String::as_str);
            match (named, legacy) {
                (Some(n), _) => n == class,
                (None, Some(l)) => l == class,
                (None, None) => we_are_default,
            }
        })
        .map(|(k, ing)| (k.clone(), ing))
        .collect();
    ours.sort_by(|(ka, a), (kb, b)| {
        let ta = a.metadata.creation_timestamp.as_ref();
        let tb = b.metadata.creation_timestamp.as_ref();
        // Objects without a timestamp (hand-written files) sort after
        // those with one, then by namespace/name.
        ta.is_none()
            .cmp(&tb.is_none())
            .then(ta.cmp(&tb))
            .then(ka.cmp(kb))
    });
    ours
}

struct Compiler<'a> {
    state: &'a ClusterState,
    slices: endpoints::SliceIndex<'a>,
    backends: Vec<Backend>,
    backend_ids: HashMap<(ObjectKey, String, PathPolicy), BackendId>,
    /// The Event reason of each backend's `problem`.
    problem_reasons: HashMap<BackendId, &'static str>,
    diagnostics: Vec<Diagnostic>,
}

impl Compiler<'_> {
    /// Resolves an Ingress backend, reporting problems on `field`. A missing
    /// Service or port still yields a backend (answering 503); an
    /// unsupported backend kind yields none (the path is skipped).
    fn backend(
        &mut self,
        ing: &ObjectKey,
        b: &IngressBackend,
        policy: PathPolicy,
        object: &str,
        field: &str,
    ) -> Option<BackendId> {
        let Some(svc) = &b.service else {
            let what = if b.resource.is_some() {
                "resource backends are not supported"
            } else {
                "has neither service nor resource"
            };
            self.diagnostics
                .push(Diagnostic::error(object, field, what).with_reason(reason::INVALID_BACKEND));
            return None;
        };
        let key = ObjectKey::new(&ing.namespace, &svc.name);
        let port = match svc
            .port
            .as_ref()
            .and_then(|p| p.number.map(|n| n.to_string()).or_else(|| p.name.clone()))
        {
            Some(p) => p,
            None => {
                self.diagnostics.push(
                    Diagnostic::error(
                        object,
                        format!("{field}.service.port"),
                        "needs a number or a name",
                    )
                    .with_reason(reason::INVALID_BACKEND),
                );
                return None;
            }
        };
        // Intern by the resolved Service port, so that `number: 80` and
        // `name: http` for the same port share one backend (and its pool).
        let resolved = self.service_port(&key, svc);
        let port = match &resolved {
            Ok((_, sp)) => sp.port.to_string(),
            Err(_) => port,
        };
        if let Some(id) = self.backend_ids.get(&(key.clone(), port.clone(), policy)) {
            if let Some(problem) = &self.backends[id.0].problem {
                let mut d = Diagnostic::error(object, format!("{field}.service"), problem.clone());
                d.reason = self.problem_reasons.get(id).copied();
                self.diagnostics.push(d);
            }
            return Some(*id);
        }
        let (endpoints, problem, port_protocol) = match resolved {
            Ok((_, sp)) => (self.endpoints_of(&key, sp), None, app_protocol(sp)),
            Err(problem) => (Vec::new(), Some(problem), None),
        };
        let id = BackendId(self.backends.len());
        let problem = problem.map(|(why, problem)| {
            self.diagnostics.push(
                Diagnostic::error(object, format!("{field}.service"), problem.clone())
                    .with_reason(why),
            );
            self.problem_reasons.insert(id, why);
            problem
        });
        self.backends.push(Backend {
            label: Arc::from(format!("{key}:{port}")),
            service: key.clone(),
            port: port.clone(),
            endpoints: Arc::from(endpoints),
            problem,
            cursor: Default::default(),
            policy,
            protocol: policy
                .backend_protocol
                .or(port_protocol)
                .unwrap_or_default(),
        });
        self.backend_ids.insert((key, port, policy), id);
        Some(id)
    }

    /// The Service and the port of it that `b` names.
    fn service_port(
        &self,
        key: &ObjectKey,
        b: &IngressServiceBackend,
    ) -> Result<(&Service, &ServicePort), (&'static str, String)> {
        let service = self.state.services.get(key).ok_or_else(|| {
            (
                reason::SERVICE_NOT_FOUND,
                format!("Service {key} not found"),
            )
        })?;
        let spec = service.spec.as_ref().ok_or_else(|| {
            (
                reason::SERVICE_NOT_FOUND,
                format!("Service {key} has no spec"),
            )
        })?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return Err((
                reason::SERVICE_UNSUPPORTED,
                format!("Service {key} is ExternalName, which is not supported"),
            ));
        }
        let want = b.port.as_ref();
        let sp = spec
            .ports
            .iter()
            .flatten()
            .find(|p| match want {
                Some(w) if w.number.is_some() => Some(p.port) == w.number,
                Some(w) => p.name.is_some() && p.name == w.name,
                None => false,
            })
            .ok_or_else(|| {
                let w = want
                    .and_then(|w| w.number.map(|n| n.to_string()).or(w.name.clone()))
                    .unwrap_or_default();
                (
                    reason::SERVICE_PORT_NOT_FOUND,
                    format!("Service {key} has no port {w}"),
                )
            })?;
        Ok((service, sp))
    }

    /// The usable endpoints of a Service port: ready ones, or serving ones
    /// (terminating pods still draining) when none is ready.
    fn endpoints_of(&self, key: &ObjectKey, sp: &ServicePort) -> Vec<Endpoint> {
        endpoints::usable(endpoints::of_service_port(&self.slices, key, sp))
    }
}

#[cfg(test)]
mod tests;
