//! What was wrong with the input, naming the object and the field.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Something was skipped: a path, a backend, a whole object.
    Error,
    /// Served, but not as the object asked (a conflict lost, a fallback).
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// `Ingress ns/name`, or `file PATH#doc` for input that did not parse.
    pub object: String,
    /// The field path inside the object, empty when about the whole object.
    pub field: String,
    pub message: String,
    /// A short PascalCase cause (`ServiceNotFound`, `ConflictLost`...), set
    /// on the diagnostics cluster mode reports as Kubernetes Events on
    /// their Ingress (`cluster::events`); None for the others.
    pub reason: Option<&'static str>,
}

impl Diagnostic {
    pub fn error(
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            object: object.into(),
            field: field.into(),
            message: message.into(),
            reason: None,
        }
    }

    pub fn warning(
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(object, field, message)
        }
    }
}

impl Diagnostic {
    /// The same diagnostic with an Event reason.
    #[must_use]
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.field.is_empty() {
            write!(f, "{sev}: {}: {}", self.object, self.message)
        } else {
            write!(f, "{sev}: {} {}: {}", self.object, self.field, self.message)
        }
    }
}

/// The reasons diagnostics carry (`Diagnostic::reason`), as Kubernetes
/// Events show them.
pub mod reason {
    /// The backend Service does not exist (or has no spec).
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    /// The backend Service has no such port.
    pub const SERVICE_PORT_NOT_FOUND: &str = "ServicePortNotFound";
    /// The backend Service is of a type not served (ExternalName).
    pub const SERVICE_UNSUPPORTED: &str = "ServiceUnsupported";
    /// A backend names neither a Service nor a port we can use.
    pub const INVALID_BACKEND: &str = "InvalidBackend";
    /// A host, path or pathType the spec does not allow.
    pub const INVALID_RULE: &str = "InvalidRule";
    /// The Ingress has no spec, or could not be read at all.
    pub const INVALID_INGRESS: &str = "InvalidIngress";
    /// An annotation value not understood (the default is used).
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    /// spec.tls[] without secretName.
    pub const TLS_SECRET_MISSING: &str = "TLSSecretMissing";
    /// spec.tls[].secretName names no TLS Secret of the Ingress's namespace.
    pub const TLS_SECRET_NOT_FOUND: &str = "TLSSecretNotFound";
    /// The TLS Secret exists but cannot serve (bad PEM, key mismatch, expired).
    pub const TLS_SECRET_INVALID: &str = "TLSSecretInvalid";
    /// spec.tls[].secretName names a Secret of another namespace (refused).
    pub const TLS_SECRET_CROSS_NAMESPACE: &str = "TLSSecretCrossNamespace";
    /// The certificate does not name a host it is used for.
    pub const TLS_CERTIFICATE_MISMATCH: &str = "TLSCertificateMismatch";
    /// An older Ingress already holds the host/path, default backend or
    /// host certificate.
    pub const CONFLICT_LOST: &str = "ConflictLost";
}
