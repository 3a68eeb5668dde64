//! `ingress check`: compile manifests and print what would be served.

use std::fmt::Write as _;

use crate::{
    cli::CheckOpts,
    model::{RouteTarget, Severity, Snapshot, compile},
    source::files,
};

/// Prints the table and diagnostics; `Ok(false)` when any object is invalid.
pub fn run(opts: &CheckOpts) -> anyhow::Result<bool> {
    if opts.config.manifests.is_empty() {
        anyhow::bail!("ingress check needs --manifests PATH");
    }
    let (state, mut diags) = files::load(&opts.config.manifests);
    let mut snap = compile(&state, &opts.config.compile_options());
    diags.extend(snap.diagnostics.iter().cloned());
    snap.diagnostics = std::sync::Arc::new(diags);
    print!("{}", render(&snap));
    Ok(!snap
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Error))
}

/// The route table and diagnostics as text.
pub fn render(snap: &Snapshot) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    let backend_cols = |id| match snap.backend(id) {
        Some(b) => {
            let eps = if let Some(p) = &b.problem {
                format!("(503: {p})")
            } else if b.endpoints.is_empty() {
                "(503: no ready endpoint)".to_string()
            } else {
                b.endpoints
                    .iter()
                    .map(|e| e.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            (b.label.to_string(), eps)
        }
        None => ("?".into(), String::new()),
    };
    for (host, table) in snap.router.tables() {
        for (kind, path, id) in table.entries() {
            let (svc, eps) = backend_cols(id);
            rows.push([host.clone(), path, format!("{kind:?}"), svc, eps]);
        }
    }
    if let Some(id) = snap.router.default_backend() {
        let (svc, eps) = backend_cols(id);
        rows.push(["*".into(), "(default backend)".into(), "-".into(), svc, eps]);
    } else if let RouteTarget::NotFound = snap.router.route(None, "/") {
        rows.push([
            "*".into(),
            "(default backend)".into(),
            "-".into(),
            "built-in 404".into(),
            String::new(),
        ]);
    }
    let header = ["HOST", "PATH", "TYPE", "SERVICE", "ENDPOINTS"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = (0..5)
            .map(|i| format!("{:<w$}", r[i], w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if !snap.l4.services.is_empty() {
        let _ = writeln!(out, "\nL4 FRONTEND / PROTO -> SERVICE (POLICY): BACKENDS");
        for ((fe, proto), svc) in &snap.l4.services {
            let backends: Vec<String> = svc
                .backends
                .iter()
                .map(|b| {
                    let mut s = b.addr.to_string();
                    if b.local {
                        s.push_str("(local)");
                    }
                    if b.terminating {
                        s.push_str("(terminating)");
                    }
                    s
                })
                .collect();
            let policy = if svc.local_policy { "Local" } else { "Cluster" };
            let backends = if backends.is_empty() {
                "(none: TCP gets RST)".to_string()
            } else {
                backends.join(",")
            };
            let _ = writeln!(
                out,
                "{fe} {proto:?} -> {}:{} ({policy}): {backends}",
                svc.service, svc.port
            );
        }
    }
    let tls_hosts = snap.tls.hosts();
    if !tls_hosts.is_empty() || snap.tls.default.is_some() {
        let _ = writeln!(out, "\nTLS HOST -> SECRET (NOT AFTER, UNIX SECONDS)");
        let not_after = |key: &crate::model::ObjectKey| {
            snap.tls
                .certificates()
                .iter()
                .find(|c| &c.secret == key)
                .map_or(0, |c| c.not_after)
        };
        for (host, secret) in &tls_hosts {
            let _ = writeln!(out, "{host} -> {secret} ({})", not_after(secret));
        }
        if let Some(d) = &snap.tls.default {
            let _ = writeln!(out, "(default) -> {} ({})", d.secret, d.not_after);
        }
    }
    if snap.diagnostics.is_empty() {
        let _ = writeln!(out, "\nno problems found");
    } else {
        let _ = writeln!(out, "\n{} problem(s):", snap.diagnostics.len());
        for d in snap.diagnostics.iter() {
            let _ = writeln!(out, "  {d}");
        }
    }
    out
}
