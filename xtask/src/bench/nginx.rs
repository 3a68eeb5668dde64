//! nginx instances run from a temp dir with their own configuration (never
//! the system's): one worker, logs and temp files in that dir, pinned to a
//! CPU, in the foreground so that the bench holds the master's handle.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::Context;

use super::{
    http,
    process::{Proc, check_interrupted},
};

/// The `http { ... }` block every instance shares; `server` blocks follow.
pub fn config(prefix: &Path, http_body: &str) -> String {
    let p = prefix.display();
    format!(
        "daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    # Persistent connections for the whole run on both sides (nginx's
    # default closes after 1000 requests; the agent has no such limit).
    keepalive_requests 1000000;
{http_body}
}}
"
    )
}

/// The backend: a fixed `200 ok\n` on `listen`.
pub fn backend_block(listen: SocketAddr) -> String {
    format!(
        "    server {{
        listen {listen};
        location / {{
            default_type text/plain;
            return 200 \"ok\\n\";
        }}
    }}"
    )
}

/// The certificate and key (PEM files) a proxy serves HTTPS with.
pub struct TlsFiles<'a> {
    pub listen: SocketAddr,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// The reference proxy: keep-alive upstream to `backend`, with the request
/// headers the agent sets too (as ingress-nginx does); with `tls`, also
/// HTTPS (TLS 1.2/1.3, session tickets and cache, as ingress-nginx's
/// defaults).
pub fn proxy_block(listen: SocketAddr, backend: SocketAddr, tls: Option<&TlsFiles<'_>>) -> String {
    let tls = tls
        .map(|t| {
            format!(
                "        listen {} ssl;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
",
                t.listen,
                t.cert.display(),
                t.key.display()
            )
        })
        .unwrap_or_default();
    format!(
        "    upstream backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
{tls}        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Request-ID $request_id;
        }}
    }}"
    )
}

/// A running nginx (master and worker); stopped on drop.
pub struct Nginx {
    pub proc: Proc,
}

/// Starts `taskset -c CPU nginx` with `http_body` in `prefix`, and waits
/// (bounded) until `GET check` with `Host: host` answers 200.
pub fn start(
    nginx: &Path,
    name: &str,
    prefix: &Path,
    cpu: u32,
    http_body: &str,
    check: SocketAddr,
    host: &str,
) -> anyhow::Result<Nginx> {
    std::fs::create_dir_all(prefix).with_context(|| format!("creating {}", prefix.display()))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config(prefix, http_body))
        .with_context(|| format!("writing {}", conf.display()))?;
    let mut proc = Proc::spawn(
        name,
        Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(nginx)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf),
        &prefix.join("stderr.log"),
    )?;
    let waited = http::wait_for_status(
        check,
        host,
        "/",
        200,
        Duration::from_secs(10),
        Duration::from_millis(20),
    );
    if let Err(e) = waited {
        check_interrupted()?;
        proc.ensure_running()?;
        let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
        return Err(e.context(format!("{name} not answering; error.log:\n{log}")));
    }
    Ok(Nginx { proc })
}

/// `nginx -v`, e.g. "nginx/1.22.1".
pub fn version(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .and_then(|v| v.strip_prefix("nginx version: ").map(str::to_string))
        .unwrap_or_else(|| "nginx".to_string())
}
