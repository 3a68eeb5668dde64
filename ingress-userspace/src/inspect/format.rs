//! Rows of `ingress bpf services|backends|flows|stats` from map entries,
//! and their rendering as aligned tables or JSON. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ingress_common::l4::{
    BACKEND_LOCAL, BACKEND_TERMINATING, BackendValue, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP,
    SVC_CLIENT_AFFINITY, SVC_LOCAL_POLICY, SVC_SOURCE_RANGES, ServiceKey, ServiceValue,
    is_v4_mapped,
};
use serde::Serialize;

/// A stored 16-byte address: IPv4-mapped ones as plain IPv4.
pub fn ip(a: &[u8; 16]) -> IpAddr {
    if is_v4_mapped(a) {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// An address and a port in network order, as `a.b.c.d:p` or `[v6]:p`.
pub fn endpoint(a: &[u8; 16], port_be: u16) -> String {
    SocketAddr::new(ip(a), u16::from_be(port_be)).to_string()
}

pub fn proto(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        n => n.to_string(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRow {
    pub frontend: String,
    pub proto: String,
    pub id: u32,
    pub backends: u32,
    pub flags: Vec<&'static str>,
    pub affinity_timeout: u32,
}

pub fn service_row(k: &ServiceKey, v: &ServiceValue) -> ServiceRow {
    let flags = [
        (SVC_LOCAL_POLICY, "local-policy"),
        (SVC_CLIENT_AFFINITY, "client-affinity"),
        (SVC_SOURCE_RANGES, "source-ranges"),
    ]
    .into_iter()
    .filter(|(bit, _)| v.flags & bit != 0)
    .map(|(_, n)| n)
    .collect();
    ServiceRow {
        frontend: endpoint(&k.addr, k.port),
        proto: proto(k.proto),
        id: v.id,
        backends: v.backend_count,
        flags,
        affinity_timeout: v.affinity_timeout,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub address: String,
    pub local: bool,
    pub terminating: bool,
}

pub fn backend_row(id: u32, v: &BackendValue) -> BackendRow {
    BackendRow {
        id,
        address: endpoint(&v.addr, v.port),
        local: v.flags & BACKEND_LOCAL != 0,
        terminating: v.flags & BACKEND_TERMINATING != 0,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRow {
    pub client: String,
    pub frontend: String,
    pub backend: String,
    pub proto: String,
    /// The source port towards a backend on another node.
    pub snat_port: Option<u16>,
    pub flags: Vec<&'static str>,
}

pub fn flow_row(k: &FlowKey, v: &FlowValue) -> FlowRow {
    let mut flags = vec![if v.flags & BACKEND_LOCAL != 0 {
        "local"
    } else {
        "remote"
    }];
    if v.flags & BACKEND_TERMINATING != 0 {
        flags.push("terminating");
    }
    if v.closed_at != 0 {
        flags.push("closing");
    }
    FlowRow {
        client: endpoint(&k.src, k.sport),
        frontend: endpoint(&k.dst, k.dport),
        backend: endpoint(&v.backend, v.backend_port),
        proto: proto(k.proto),
        snat_port: (v.snat_port != 0).then(|| u16::from_be(v.snat_port)),
        flags,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatRow {
    pub hook: &'static str,
    /// As `/metrics` names it, without the hook label.
    pub counter: String,
    pub value: u64,
}

/// Something `ingress bpf` prints.
pub trait Row: Serialize {
    const HEADER: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

fn flags_cell(flags: &[&str]) -> String {
    if flags.is_empty() {
        "-".into()
    } else {
        flags.join(",")
    }
}

impl Row for ServiceRow {
    const HEADER: &'static [&'static str] = &[
        "FRONTEND",
        "PROTO",
        "ID",
        "BACKENDS",
        "FLAGS",
        "AFFINITY_TIMEOUT",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.frontend.clone(),
            self.proto.clone(),
            self.id.to_string(),
            self.backends.to_string(),
            flags_cell(&self.flags),
            if self.affinity_timeout == 0 {
                "-".into()
            } else {
                format!("{}s", self.affinity_timeout)
            },
        ]
    }
}

impl Row for BackendRow {
    const HEADER: &'static [&'static str] = &["ID", "ADDRESS", "LOCAL", "TERMINATING"];
    fn cells(&self) -> Vec<String> {
        let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
        vec![
            self.id.to_string(),
            self.address.clone(),
            yn(self.local),
            yn(self.terminating),
        ]
    }
}

impl Row for FlowRow {
    const HEADER: &'static [&'static str] = &[
        "PROTO",
        "CLIENT",
        "",
        "FRONTEND",
        "",
        "BACKEND",
        "SNAT_PORT",
        "FLAGS",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.proto.clone(),
            self.client.clone(),
            "->".into(),
            self.frontend.clone(),
            "->".into(),
            self.backend.clone(),
            self.snat_port.map_or("-".into(), |p| p.to_string()),
            flags_cell(&self.flags),
        ]
    }
}

impl Row for StatRow {
    const HEADER: &'static [&'static str] = &["HOOK", "COUNTER", "VALUE"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.hook.to_string(),
            self.counter.clone(),
            self.value.to_string(),
        ]
    }
}

/// Rows as a table with aligned columns (header first, two spaces apart).
pub fn table<R: Row>(rows: &[R]) -> String {
    let mut lines: Vec<Vec<String>> = vec![R::HEADER.iter().map(|h| h.to_string()).collect()];
    lines.extend(rows.iter().map(Row::cells));
    let cols = R::HEADER.len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let mut line = String::new();
        for (c, cell) in l.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if c + 1 < cols {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Rows as a JSON array (one object per row), with a newline.
pub fn json<R: Row>(rows: &[R]) -> String {
    let mut s = serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use ingress_common::l4::v4_mapped;

    use super::*;

    #[test]
    fn addresses_show_ipv4_plainly() {
        assert_eq!(
            endpoint(&v4_mapped([198, 18, 0, 1]), 30080u16.to_be()),
            "198.18.0.1:30080"
        );
        let v6: [u8; 16] = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(endpoint(&v6, 443u16.to_be()), "[fd00::1]:443");
        // ::1.2.3.4 (IPv4-compatible, not mapped) stays IPv6.
        let mut compat = [0u8; 16];
        compat[12..].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(ip(&compat).to_string(), "::102:304");
    }

    #[test]
    fn service_rows() {
        let k = ServiceKey {
            addr: v4_mapped([198, 18, 0, 1]),
            port: 30080u16.to_be(),
            proto: PROTO_TCP,
            _pad: 0,
        };
        let v = ServiceValue {
            id: 3,
            backend_count: 2,
            flags: SVC_CLIENT_AFFINITY | SVC_LOCAL_POLICY,
            affinity_timeout: 10800,
        };
        let r = service_row(&k, &v);
        assert_eq!(r.frontend, "198.18.0.1:30080");
        assert_eq!(r.proto, "tcp");
        assert_eq!(r.flags, ["local-policy", "client-affinity"]);
        let t = table(&[r]);
        assert_eq!(
            t,
            "FRONTEND          PROTO  ID  BACKENDS  FLAGS                         AFFINITY_TIMEOUT\n\
             198.18.0.1:30080  tcp    3   2         local-policy,client-affinity  10800s\n"
        );
    }

    #[test]
    fn flow_rows_name_both_hops() {
        let k = FlowKey {
            src: v4_mapped([198, 18, 0, 2]),
            dst: v4_mapped([198, 18, 0, 1]),
            sport: 40000u16.to_be(),
            dport: 30080u16.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let remote = FlowValue {
            backend: v4_mapped([198, 18, 0, 3]),
            backend_port: 8080u16.to_be(),
            snat_port: 20001u16.to_be(),
            flags: 0,
            _pad: [0; 3],
            closed_at: 0,
        };
        let r = flow_row(&k, &remote);
        assert_eq!(
            table(std::slice::from_ref(&r)).lines().nth(1).unwrap(),
            "tcp    198.18.0.2:40000  ->  198.18.0.1:30080  ->  198.18.0.3:8080  20001      remote"
        );
        let local = FlowValue {
            snat_port: 0,
            flags: BACKEND_LOCAL | BACKEND_TERMINATING,
            closed_at: 7,
            ..remote
        };
        let r2 = flow_row(&k, &local);
        assert_eq!(r2.snat_port, None);
        assert_eq!(r2.flags, ["local", "terminating", "closing"]);
        let j: serde_json::Value = serde_json::from_str(&json(&[r, r2])).unwrap();
        assert_eq!(j[0]["snat_port"], 20001);
        assert_eq!(j[1]["snat_port"], serde_json::Value::Null);
        assert_eq!(j[1]["backend"], "198.18.0.3:8080");
    }

    #[test]
    fn backend_and_stat_rows() {
        let b = backend_row(
            7,
            &BackendValue {
                addr: v4_mapped([198, 18, 3, 2]),
                port: 8080u16.to_be(),
                flags: BACKEND_LOCAL,
                _pad: 0,
            },
        );
        assert_eq!(b.cells(), ["7", "198.18.3.2:8080", "yes", "no"]);
        let s = StatRow {
            hook: "xdp",
            counter: "ingress_datapath_packets_total".into(),
            value: 12,
        };
        assert_eq!(
            table(&[s]),
            "HOOK  COUNTER                         VALUE\nxdp   ingress_datapath_packets_total  12\n"
        );
        // No rows: the header alone.
        assert_eq!(
            table::<BackendRow>(&[]),
            "ID  ADDRESS  LOCAL  TERMINATING\n"
        );
        assert_eq!(json::<BackendRow>(&[]), "[]\n");
    }
}
