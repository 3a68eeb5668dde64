//! The Services of the L4 bench, and the two ways a node is told about them:
//! manifests for the agent, and iptables rules written the way kube-proxy's
//! iptables mode writes them (for the reference side). Pure: text in, text
//! out, tested below.

use std::{fmt::Write as _, net::Ipv4Addr};

/// One Service with one TCP port (`port` -> `target_port` on its endpoints).
#[derive(Debug, Clone, PartialEq)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    pub cluster_ip: Ipv4Addr,
    pub node_port: Option<u16>,
    pub external_ip: Option<Ipv4Addr>,
    /// (pod address, node name).
    pub endpoints: Vec<(Ipv4Addr, String)>,
}

impl Svc {
    /// kube-proxy's "service port name": `namespace/name:port-name`.
    fn port_name(&self) -> String {
        format!("{}/{}:http", self.namespace, self.name)
    }
}

/// The measured Services: NodePort `node_port_local` to a pod on the
/// ingress node, NodePort `node_port_local + 1` to a pod on a worker.
pub struct Measured {
    pub node_port: u16,
    pub local_pod: Ipv4Addr,
    pub local_node: String,
    pub remote_pod: Ipv4Addr,
    pub remote_node: String,
    pub target_port: u16,
}

/// `total` Services (at least the two measured ones): the two measured
/// NodePorts first, then `total - 2` others of type ClusterIP with an
/// externalIP each (nodePorts are limited to 30000-32767, so the others are
/// told apart by address, as LoadBalancer and externalIP Services are),
/// two endpoints each on a worker. Every address is in 198.18.0.0/15:
/// cluster IPs in 198.19.128.0/17, external IPs in 198.19.0.0/17, the
/// others' endpoints in 198.18.128.0/17 (never reached).
pub fn bench_services(total: usize, m: &Measured) -> Vec<Svc> {
    let mut out = vec![
        Svc {
            namespace: "bench".into(),
            name: "web-local".into(),
            port: 80,
            target_port: m.target_port,
            cluster_ip: Ipv4Addr::new(198, 19, 255, 1),
            node_port: Some(m.node_port),
            external_ip: None,
            endpoints: vec![(m.local_pod, m.local_node.clone())],
        },
        Svc {
            namespace: "bench".into(),
            name: "web-remote".into(),
            port: 80,
            target_port: m.target_port,
            cluster_ip: Ipv4Addr::new(198, 19, 255, 2),
            node_port: Some(m.node_port + 1),
            external_ip: None,
            endpoints: vec![(m.remote_pod, m.remote_node.clone())],
        },
    ];
    let offset = |base: [u8; 4], i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + i);
    for i in 0..total.saturating_sub(2) as u32 {
        out.push(Svc {
            namespace: "bench".into(),
            name: format!("svc-{i:05}"),
            port: 80,
            target_port: m.target_port,
            cluster_ip: offset([198, 19, 128, 0], i + 1),
            node_port: None,
            external_ip: Some(offset([198, 19, 0, 0], i + 1)),
            endpoints: (1..=2)
                .map(|j| (offset([198, 18, 128, 0], 2 * i + j), m.remote_node.clone()))
                .collect(),
        });
    }
    out
}

/// The Services and their EndpointSlices as YAML for `ingress run
/// --manifests`.
pub fn manifests(services: &[Svc]) -> String {
    let mut y = String::with_capacity(services.len() * 640);
    for s in services {
        let (kind, node_port) = match s.node_port {
            Some(p) => ("NodePort", format!(", nodePort: {p}")),
            None => ("ClusterIP", String::new()),
        };
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  type: {kind}\n  clusterIP: {cip}\n",
            name = s.name,
            ns = s.namespace,
            cip = s.cluster_ip,
        );
        if let Some(ip) = s.external_ip {
            let _ = writeln!(y, "  externalIPs: [{ip}]");
        }
        let _ = writeln!(
            y,
            "  ports: [{{name: http, port: {}, targetPort: {}{node_port}}}]",
            s.port, s.target_port
        );
        let _ = write!(
            y,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-ep, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {tp}, protocol: TCP}}]\nendpoints:\n",
            name = s.name,
            ns = s.namespace,
            tp = s.target_port,
        );
        for (ip, node) in &s.endpoints {
            let _ = writeln!(
                y,
                "- {{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{ready: true}}}}"
            );
        }
    }
    y
}

/// 16 characters of base32 (RFC 4648 alphabet) over an 80-bit hash of
/// `text`, the shape of kube-proxy's chain suffixes (kube-proxy hashes with
/// SHA-256; any well-spread hash gives chains of the same length).
fn chain_hash(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        text.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let bits = (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x84222325cbf29ce4));
    (0..16)
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// The `iptables-restore` input kube-proxy's iptables mode would write for
/// `services` (externalTrafficPolicy Cluster, no cluster CIDR given, so no
/// rule masquerades by source range): the nat table's PREROUTING/OUTPUT ->
/// KUBE-SERVICES with one rule per cluster IP and external IP, then the
/// jump to KUBE-NODEPORTS for local destinations as the chain's last rule;
/// KUBE-EXT-* chains marking for masquerade, KUBE-SVC-* chains choosing an
/// endpoint with `-m statistic --mode random --probability`, KUBE-SEP-*
/// chains doing the DNAT, and POSTROUTING -> KUBE-POSTROUTING masquerading
/// marked traffic; the filter table's forwarding rules.
pub fn kube_proxy_rules(services: &[Svc]) -> String {
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    let mut nodeports = Vec::new();
    let mut services_rules = Vec::new();
    for s in services {
        let spn = s.port_name();
        let h = chain_hash(&format!("{spn}tcp"));
        let (svc, ext) = (format!("KUBE-SVC-{h}"), format!("KUBE-EXT-{h}"));
        chains.push(svc.clone());
        services_rules.push(format!(
            "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} -j {svc}",
            s.cluster_ip, s.port
        ));
        let has_ext = s.external_ip.is_some() || s.node_port.is_some();
        if has_ext {
            chains.push(ext.clone());
            rules.push(format!(
                "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ"
            ));
            rules.push(format!("-A {ext} -j {svc}"));
        }
        if let Some(ip) = s.external_ip {
            services_rules.push(format!(
                "-A KUBE-SERVICES -m comment --comment \"{spn} external IP\" -m tcp -p tcp -d {ip}/32 --dport {} -j {ext}",
                s.port
            ));
        }
        if let Some(p) = s.node_port {
            nodeports.push(format!(
                "-A KUBE-NODEPORTS -m comment --comment {spn} -m tcp -p tcp --dport {p} -j {ext}"
            ));
        }
        let n = s.endpoints.len();
        for (i, (ip, _)) in s.endpoints.iter().enumerate() {
            let ep = format!("{ip}:{}", s.target_port);
            let sep = format!("KUBE-SEP-{}", chain_hash(&format!("{spn}tcp{ep}")));
            chains.push(sep.clone());
            let pick = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            rules.push(format!(
                "-A {svc} -m comment --comment \"{spn} -> {ep}\"{pick} -j {sep}"
            ));
            rules.push(format!(
                "-A {sep} -m comment --comment {spn} -s {ip}/32 -j KUBE-MARK-MASQ"
            ));
            rules.push(format!(
                "-A {sep} -m comment --comment {spn} -m tcp -p tcp -j DNAT --to-destination {ep}"
            ));
        }
    }
    let mut t = String::with_capacity(256 * (rules.len() + services_rules.len()) + 4096);
    t.push_str("*filter\n");
    for c in [
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-NODEPORTS",
    ] {
        let _ = writeln!(t, ":{c} - [0:0]");
    }
    t.push_str(
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
",
    );
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ]
    .into_iter()
    .map(str::to_string)
    .chain(chains)
    {
        let _ = writeln!(t, ":{c} - [0:0]");
    }
    t.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
",
    );
    for r in nodeports.iter().chain(&services_rules) {
        t.push_str(r);
        t.push('\n');
    }
    t.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    for r in &rules {
        t.push_str(r);
        t.push('\n');
    }
    t.push_str("COMMIT\n");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured() -> Measured {
        Measured {
            node_port: 30080,
            local_pod: Ipv4Addr::new(198, 18, 1, 2),
            local_node: "edge-1".into(),
            remote_pod: Ipv4Addr::new(198, 18, 0, 3),
            remote_node: "worker-1".into(),
            target_port: 8080,
        }
    }

    #[test]
    fn the_measured_services_come_first_and_addresses_stay_in_the_bench_range() {
        let s = bench_services(10_000, &measured());
        assert_eq!(s.len(), 10_000);
        assert_eq!(s[0].node_port, Some(30080));
        assert_eq!(s[1].node_port, Some(30081));
        assert_eq!(s[1].endpoints[0].1, "worker-1");
        let mut seen = std::collections::HashSet::new();
        for svc in &s {
            let addrs = [Some(svc.cluster_ip), svc.external_ip]
                .into_iter()
                .flatten()
                .chain(svc.endpoints.iter().map(|e| e.0));
            for a in addrs {
                let o = a.octets();
                assert!(o[0] == 198 && (o[1] == 18 || o[1] == 19), "{a}");
                if a != Ipv4Addr::new(198, 18, 1, 2) && a != Ipv4Addr::new(198, 18, 0, 3) {
                    assert!(seen.insert(a), "{a} used twice");
                }
            }
        }
        assert_eq!(bench_services(1, &measured()).len(), 2);
    }

    #[test]
    fn manifests_hold_a_service_and_a_slice_each() {
        let y = manifests(&bench_services(3, &measured()));
        assert_eq!(y.matches("kind: Service\n").count(), 3);
        assert_eq!(y.matches("kind: EndpointSlice").count(), 3);
        assert!(y.contains("type: NodePort"));
        assert!(y.contains("nodePort: 30081"));
        assert!(y.contains("externalIPs: [198.19.0.1]"));
        assert!(y.contains("addresses: [\"198.18.128.2\"], nodeName: worker-1"));
    }

    #[test]
    fn rules_follow_kube_proxy() {
        let t = kube_proxy_rules(&bench_services(3, &measured()));
        let lines: Vec<&str> = t.lines().collect();
        // Every chain that gets a rule is declared, and the other way round.
        let nat = &lines[lines.iter().position(|l| *l == "*nat").unwrap()..];
        for l in nat.iter().filter(|l| l.starts_with("-A ")) {
            let chain = l.split_whitespace().nth(1).unwrap();
            if !["PREROUTING", "OUTPUT", "POSTROUTING"].contains(&chain) {
                assert!(nat.contains(&format!(":{chain} - [0:0]").as_str()), "{l}");
            }
            if let Some(target) = l.split(" -j ").nth(1).map(|t| t.split(' ').next().unwrap())
                && target.starts_with("KUBE-")
            {
                assert!(nat.contains(&format!(":{target} - [0:0]").as_str()), "{l}");
            }
        }
        // The NodePort jump is KUBE-SERVICES' last rule, after every
        // Service's own rules.
        let services: Vec<&&str> = nat
            .iter()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .collect();
        assert_eq!(services.len(), 3 + 1 + 1);
        assert!(
            services
                .last()
                .unwrap()
                .contains("--dst-type LOCAL -j KUBE-NODEPORTS")
        );
        // Two endpoints: the first by probability one half, the second the rest.
        assert_eq!(t.matches("--probability 0.5000000000").count(), 1);
        assert_eq!(t.matches("-j DNAT --to-destination").count(), 4);
        assert!(t.contains("--dport 30080 -j KUBE-EXT-"));
        assert!(t.contains("-j MASQUERADE --random-fully"));
        assert_eq!(t.matches("COMMIT").count(), 2);
    }

    #[test]
    fn chain_names_have_kube_proxys_shape() {
        let h = chain_hash("bench/web-local:httptcp");
        assert_eq!(h.len(), 16);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
        assert_ne!(h, chain_hash("bench/web-remote:httptcp"));
        // KUBE-SEP- plus 16 characters: 25, within iptables' 28.
        assert!(format!("KUBE-SEP-{h}").len() <= 28);
    }
}
