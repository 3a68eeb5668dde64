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
