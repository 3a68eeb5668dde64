//! Command-line contract of the `ingress` binary (see docs/architecture.md).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::proxy::{LoadBalance, ProxyConfig};

#[derive(Debug, Parser)]
#[command(
    name = "ingress",
    version,
    about = "eBPF-assisted Kubernetes ingress data plane"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "INGRESS_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach the eBPF programs and serve until SIGINT/SIGTERM.
    Run(Box<RunOpts>),
    /// Compile manifests, print the route table and every diagnostic; exit 1
    /// when any object is invalid.
    Check(CheckOpts),
    /// Inspect or remove what the agent pinned under bpffs.
    #[command(subcommand)]
    Bpf(BpfCommand),
}

/// `ingress bpf ...`: read the pinned maps (read-only) or remove the pins.
#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// The L4 services: frontend, id, backends, flags, affinity timeout.
    Services(BpfOpts),
    /// The L4 backends: id, address, local/terminating.
    Backends(BpfOpts),
    /// The connection table: client -> frontend -> backend, SNAT port, flags.
    Flows(BpfOpts),
    /// The datapath counters by hook and name, summed over CPUs.
    Stats(BpfOpts),
    /// Remove every link and map the agent pinned (nothing stays attached).
    Detach(BpfDirOpt),
}

/// Where the agent pins its maps and links.
#[derive(Debug, Args, Clone)]
pub struct BpfDirOpt {
    /// Directory under a bpffs mount for the pinned maps and links (the
    /// layout lives in a versioned subdirectory, `v1/`).
    #[arg(long, default_value = DEFAULT_BPFFS_DIR, value_name = "DIR")]
    pub bpffs_dir: PathBuf,
}

/// The default pin directory.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/ingress-ebpf";

#[derive(Debug, Args, Clone)]
pub struct BpfOpts {
    #[command(flatten)]
    pub dir: BpfDirOpt,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// What happens to the pinned links and maps when the agent exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnExit {
    /// Links and maps stay pinned and attached: traffic keeps flowing while
    /// the agent restarts, and the next agent adopts the flows.
    Keep,
    /// Remove the links and pins: nothing stays attached.
    Detach,
}

/// Sizes and ranges of the L4 path, fixed at load time.
#[derive(Debug, Args, Clone)]
pub struct L4Opts {
    /// Services (frontends) the L4 maps hold; the Maglev array holds this
    /// many tables.
    #[arg(long, default_value_t = ingress_common::l4::DEFAULT_MAX_SERVICES, value_parser = parse_count)]
    pub l4_max_services: u32,
    /// Backends (pod address and port) the L4 maps hold.
    #[arg(long, default_value_t = ingress_common::l4::DEFAULT_MAX_BACKENDS, value_parser = parse_count)]
    pub l4_max_backends: u32,
    /// Flows the connection table holds (also sizes the reverse-translation
    /// and ClientIP-affinity tables); least recently used entries go first.
    #[arg(long, default_value_t = ingress_common::l4::DEFAULT_MAX_FLOWS, value_parser = parse_count)]
    pub l4_max_flows: u32,
    /// Slots of each Service's Maglev table; must be prime (about 100 per
    /// backend keeps shares even).
    #[arg(long, default_value_t = ingress_common::maglev::DEFAULT_TABLE_SIZE, value_parser = parse_maglev_size)]
    pub maglev_table_size: u32,
    /// Source ports for flows SNATed to pods on other nodes, `MIN-MAX`
    /// (keep it clear of the NodePort range and local ephemeral ports).
    #[arg(long, default_value = "1024-29999", value_parser = parse_port_range, value_name = "MIN-MAX")]
    pub snat_port_range: PortRange,
    /// New flows one CPU records per second; past it new flows are refused
    /// (counted as `l4_new_flow_refused`), so a SYN flood cannot push the
    /// established flows out of the connection table. 0: no limit.
    #[arg(long, default_value_t = ingress_common::l4::DEFAULT_NEW_FLOW_RATE)]
    pub l4_new_flow_rate: u32,
    /// How long a flow that saw a TCP FIN or RST keeps its entries (for the
    /// last segments and retransmissions) before the sweep removes them; a
    /// remote flow's reverse entry stays at least 60 s (the pod's TIME_WAIT).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub l4_close_timeout: Duration,
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    /// How many ports the range holds (at most 65,535: port 0 is refused).
    pub fn span(&self) -> u16 {
        self.max - self.min + 1
    }
}

/// A positive count.
fn parse_count(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// A prime Maglev table size (Maglev's permutations need it).
fn parse_maglev_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if n > MAX_MAGLEV_TABLE_SIZE {
        return Err(format!(
            "{n} is too large (at most {MAX_MAGLEV_TABLE_SIZE} slots per Service)"
        ));
    }
    if !ingress_common::maglev::is_prime(n) {
        return Err(format!(
            "{n} is not prime (Maglev needs a prime table size; {} is the next one)",
            ingress_common::maglev::next_prime(n)
        ));
    }
    Ok(n)
}

/// The largest Maglev table accepted (a prime; enough for over 1,000
/// backends at 100 slots each).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 131_071;

/// `MIN-MAX`, 1 <= MIN <= MAX <= 65535.
fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let bad = || format!("'{s}' is not a port range MIN-MAX with 1 <= MIN <= MAX <= 65535");
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let min: u16 = a.trim().parse().map_err(|_| bad())?;
    let max: u16 = b.trim().parse().map_err(|_| bad())?;
    if min == 0 || min > max {
        return Err(bad());
    }
    Ok(PortRange { min, max })
}

/// Where the configuration comes from and whose it is.
#[derive(Debug, Args, Clone)]
pub struct ConfigOpts {
    /// Standalone mode: YAML (or JSON) manifest files or directories,
    /// watched for changes. Repeat for several.
    #[arg(long = "manifests", value_name = "PATH")]
    pub manifests: Vec<PathBuf>,

    /// Cluster mode: watch the API server named by this kubeconfig file.
    /// Without it and without --manifests, the in-cluster configuration
    /// (service account token, KUBERNETES_SERVICE_HOST) is used.
    #[arg(long, value_name = "PATH", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,

    /// Cluster mode: watch Ingresses, Services, EndpointSlices and Secrets
    /// in this namespace only (IngressClasses and Nodes are cluster-wide).
    #[arg(long, value_name = "NAMESPACE", conflicts_with = "manifests")]
    pub watch_namespace: Option<String>,

    /// The IngressClass this agent serves.
    #[arg(long, default_value = "ingress-ebpf", env = "INGRESS_CLASS")]
    pub ingress_class: String,

    /// This node's name (for node-local endpoint choices). Defaults to
    /// $NODE_NAME, then the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Cluster mode, as ingress-nginx's flag: when the last agent of the
    /// class stops (SIGTERM) while holding the status Lease, it clears the
    /// status it published from the Ingresses it served. `false` leaves
    /// the last addresses shown.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub update_status_on_shutdown: bool,

    /// An address of this node that NodePorts answer on. Repeat for
    /// several (IPv4 and IPv6).
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ips: Vec<std::net::IpAddr>,

    /// The Secret (NAMESPACE/NAME, kubernetes.io/tls) served to TLS clients
    /// whose SNI name no Ingress lists; without it, a self-signed
    /// certificate made at start-up.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_object_key)]
    pub default_ssl_certificate: Option<crate::model::ObjectKey>,

    /// Redirect plain HTTP to HTTPS (308) for hosts listed under an
    /// Ingress's spec.tls, unless its `nginx.ingress.kubernetes.io/ssl-redirect`
    /// annotation says otherwise.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub ssl_redirect: bool,
}

/// `namespace/name`.
fn parse_object_key(s: &str) -> Result<crate::model::ObjectKey, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(crate::model::ObjectKey::new(ns, name))
        }
        _ => Err(format!("'{s}' is not NAMESPACE/NAME")),
    }
}

impl ConfigOpts {
    pub fn compile_options(&self) -> crate::model::CompileOptions {
        crate::model::CompileOptions {
            ingress_class: self.ingress_class.clone(),
            node_name: self.node_name(),
            node_ips: self.node_ips.clone(),
            default_certificate: self.default_ssl_certificate.clone(),
            ssl_redirect: self.ssl_redirect,
        }
    }

    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_default()
    }
}

#[derive(Debug, Args, Clone)]
pub struct CheckOpts {
    #[command(flatten)]
    pub config: ConfigOpts,
}

/// Proxy limits and timeouts (defaults follow ingress-nginx's).
#[derive(Debug, Args, Clone)]
pub struct ProxyOpts {
    /// Time allowed to connect to a pod.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub proxy_connect_timeout: Duration,
    /// Time allowed for a pod's response head.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub proxy_read_timeout: Duration,
    /// Idle time after which kept-alive connections (client and upstream) close.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub proxy_idle_timeout: Duration,
    /// Largest request body; larger ones get 413 (k, m, g suffixes).
    #[arg(long, default_value = "1m", value_parser = parse_size)]
    pub proxy_body_size: u64,
    /// Largest request URI; longer ones get 414.
    #[arg(long, default_value = "8k", value_parser = parse_size)]
    pub max_uri_size: u64,
    /// Largest request header block; larger ones get 431.
    #[arg(long, default_value = "32k", value_parser = parse_size)]
    pub max_header_size: u64,
    /// Other endpoints tried when connecting to one fails.
    #[arg(long, default_value_t = 2)]
    pub proxy_retries: usize,
    /// How to choose among a Service's endpoints.
    #[arg(long, value_enum, default_value_t = LoadBalance::RoundRobin)]
    pub load_balance: LoadBalance,
    /// Proxy worker threads, each with its own runtime, listener
    /// (SO_REUSEPORT) and upstream pools; 0 means one per CPU this process
    /// may run on.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

impl ProxyOpts {
    /// The number of proxy workers to run.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig {
            connect_timeout: self.proxy_connect_timeout,
            read_timeout: self.proxy_read_timeout,
            idle_timeout: self.proxy_idle_timeout,
            max_body_bytes: self.proxy_body_size,
            max_uri_bytes: self.max_uri_size as usize,
            max_header_bytes: self.max_header_size as usize,
            retries: self.proxy_retries,
            load_balance: self.load_balance,
            ..ProxyConfig::default()
        }
    }
}

/// Sizes as ingress-nginx writes them: `512`, `8k`, `1m`, `1g`.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mul) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1024),
        Some('m') => (&s[..s.len() - 1], 1024 * 1024),
        Some('g') => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s.as_str(), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("'{s}' is not a size like 512, 8k, 1m"))
}

#[derive(Debug, Args, Clone)]
pub struct RunOpts {
    /// Uplink interface(s) for the XDP and TC programs. Repeat for several.
    #[arg(long = "interface", value_name = "IFACE", value_parser = parse_interface)]
    pub interfaces: Vec<String>,

    /// How XDP attaches: `native` (driver), `skb` (generic) or `off` (no
    /// eBPF at all).
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    pub xdp_mode: XdpModeArg,

    /// How the TC egress program attaches: `tcx` (a bpf link pinned under
    /// --bpffs-dir, Linux 6.6+), `netlink` (a cls_bpf direct-action filter
    /// on the clsact egress hook at the agent's fixed priority and handle,
    /// any kernel from 5.10) or `auto` (tcx from 6.6, netlink below).
    #[arg(long, value_enum, default_value_t = TcAttachArg::Auto)]
    pub tc_attach: TcAttachArg,

    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub admin_listen: SocketAddr,

    /// Address of the HTTP listener.
    #[arg(long, default_value = "0.0.0.0:80")]
    pub http_listen: SocketAddr,

    /// Address of the HTTPS listener (TLS 1.2/1.3, HTTP/1.1 and HTTP/2 by
    /// ALPN), or `off`.
    #[arg(long, default_value = "0.0.0.0:443", value_parser = parse_listen)]
    pub https_listen: Listen,

    /// The addresses (IPs or host names) Ingress status shows, as
    /// ingress-nginx's flag: repeat it or give a comma-separated list. First
    /// in precedence, before --publish-service and the ingress nodes'
    /// addresses. In standalone mode `/status/ingresses` shows them (else
    /// the HTTP listener's address when it is not a wildcard).
    #[arg(long, value_name = "ADDRESS", value_delimiter = ',', value_parser = parse_status_address)]
    pub publish_status_address: Vec<String>,

    /// Cluster mode: Ingress status shows the load balancer addresses
    /// (`status.loadBalancer.ingress`, then `spec.externalIPs`) of this
    /// Service, NAMESPACE/NAME, and follows them. Unless
    /// --publish-status-address is given.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_object_key, conflicts_with = "manifests")]
    pub publish_service: Option<crate::model::ObjectKey>,

    #[command(flatten)]
    pub config: ConfigOpts,

    #[command(flatten)]
    pub proxy: ProxyOpts,

    #[command(flatten)]
    pub l4: L4Opts,

    #[command(flatten)]
    pub bpffs: BpfDirOpt,

    /// On exit, `keep` leaves the programs attached and their maps pinned
    /// (a restarted agent adopts them and keeps established flows);
    /// `detach` removes links and pins so nothing stays attached.
    #[arg(long, value_enum, default_value_t = OnExit::Keep)]
    pub on_exit: OnExit,
}

/// One status address: an IP or a host name, trimmed, never empty.
fn parse_status_address(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t.contains(char::is_whitespace) || t.contains('/') {
        return Err(format!("'{s}' is not an IP address or a host name"));
    }
    Ok(t.to_string())
}

/// A listener address, or `off` for no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("'{s}' is neither an address like 0.0.0.0:443 nor off"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Native,
    Skb,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TcAttachArg {
    Auto,
    Tcx,
    Netlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Interface names as the kernel accepts them: 1 to 15 bytes, no `/`, no
/// whitespace, no NUL.
fn parse_interface(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!("interface name '{s}' must be 1 to 15 bytes"));
    }
    if s.bytes()
        .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
    {
        return Err(format!(
            "interface name '{s}' has a character the kernel refuses"
        ));
    }
    Ok(s.to_string())
}

/// Parses `std::env::args`. Help and version print and exit 0; a usage error
/// prints one line and exits 1 (the agent's contract for bad input).
pub fn parse() -> Result<Cli, ExitCode> {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Result<Cli, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("ingress: {}", one_line(&e.render().to_string()));
            Err(ExitCode::from(1))
        }
    }
}

/// Folds clap's multi-line error into one line, dropping the "try --help" tip.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_opts(args: &[&str]) -> Result<RunOpts, clap::Error> {
        let mut full = vec!["ingress", "run"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| match c.command {
            Command::Run(o) => *o,
            _ => unreachable!(),
        })
    }

    fn bpf(args: &[&str]) -> Result<BpfCommand, clap::Error> {
        let mut full = vec!["ingress", "bpf"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| match c.command {
            Command::Bpf(b) => b,
            _ => unreachable!(),
        })
    }

    #[test]
    fn cluster_mode_flags() {
        let o = run_opts(&["--kubeconfig", "/k", "--watch-namespace", "apps"]).unwrap();
        assert_eq!(
            o.config.kubeconfig.as_deref(),
            Some(std::path::Path::new("/k"))
        );
        assert_eq!(o.config.watch_namespace.as_deref(), Some("apps"));
        assert!(o.config.manifests.is_empty());
        let o = run_opts(&[]).unwrap();
        assert!(o.config.kubeconfig.is_none() && o.config.watch_namespace.is_none());
        // One source at a time.
        let e = run_opts(&["--kubeconfig", "/k", "--manifests", "/m"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let e = run_opts(&["--watch-namespace", "a", "--manifests", "/m"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn status_address_flags() {
        let o = run_opts(&[
            "--publish-status-address",
            "198.18.0.1, lb.example",
            "--publish-status-address",
            "fd00::1",
            "--publish-service",
            "ingress/edge",
        ])
        .unwrap();
        assert_eq!(
            o.publish_status_address,
            ["198.18.0.1", "lb.example", "fd00::1"]
        );
        assert_eq!(
            o.publish_service,
            Some(crate::model::ObjectKey::new("ingress", "edge"))
        );
        let o = run_opts(&[]).unwrap();
        assert!(o.publish_status_address.is_empty() && o.publish_service.is_none());
        assert!(run_opts(&["--publish-service", "edge"]).is_err());
        assert!(run_opts(&["--publish-status-address", "a,,b"]).is_err());
        let e = run_opts(&["--publish-service", "a/b", "--manifests", "/m"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn update_status_on_shutdown_is_on_unless_false() {
        let on = |args: &[&str]| run_opts(args).map(|o| o.config.update_status_on_shutdown);
        assert!(on(&[]).unwrap());
        assert!(on(&["--update-status-on-shutdown"]).unwrap());
        assert!(on(&["--update-status-on-shutdown=true"]).unwrap());
        assert!(!on(&["--update-status-on-shutdown=false"]).unwrap());
        assert!(!on(&["--update-status-on-shutdown", "false"]).unwrap());
        assert!(on(&["--update-status-on-shutdown=maybe"]).is_err());
    }

    #[test]
    fn l4_defaults() {
        let o = run_opts(&[]).unwrap();
        assert_eq!(o.l4.l4_max_services, 4096);
        assert_eq!(o.l4.l4_max_backends, 65536);
        assert_eq!(o.l4.l4_max_flows, 262144);
        assert_eq!(o.l4.maglev_table_size, 1021);
        assert_eq!(
            o.l4.snat_port_range,
            PortRange {
                min: 1024,
                max: 29999
            }
        );
        assert_eq!(o.l4.snat_port_range.span(), 28976);
        assert_eq!(
            o.l4.snat_port_range.span(),
            ingress_common::l4::DEFAULT_SNAT_PORT_SPAN
        );
        assert_eq!(o.l4.l4_new_flow_rate, 100_000);
        assert_eq!(o.l4.l4_close_timeout, Duration::from_secs(10));
        assert_eq!(o.bpffs.bpffs_dir, PathBuf::from("/sys/fs/bpf/ingress-ebpf"));
        assert_eq!(o.on_exit, OnExit::Keep);
    }

    #[test]
    fn l4_values() {
        let o = run_opts(&[
            "--l4-max-services",
            "10",
            "--l4-max-backends",
            "100",
            "--l4-max-flows",
            "1000",
            "--maglev-table-size",
            "65537",
            "--snat-port-range",
            "1-65535",
            "--bpffs-dir",
            "/sys/fs/bpf/x",
            "--on-exit",
            "detach",
        ])
        .unwrap();
        assert_eq!(o.l4.l4_max_services, 10);
        assert_eq!(o.l4.l4_max_backends, 100);
        assert_eq!(o.l4.l4_max_flows, 1000);
        assert_eq!(o.l4.maglev_table_size, 65537);
        assert_eq!(o.l4.snat_port_range.span(), 65535);
        assert_eq!(o.on_exit, OnExit::Detach);
    }

    #[test]
    fn bad_l4_values_are_refused_in_one_line() {
        for (flag, value, needle) in [
            ("--maglev-table-size", "1000", "not prime"),
            ("--maglev-table-size", "x", "not a whole number"),
            ("--maglev-table-size", "4294967295", "too large"),
            ("--snat-port-range", "30000-20000", "port range"),
            ("--snat-port-range", "0-10", "port range"),
            ("--snat-port-range", "20000", "port range"),
            ("--snat-port-range", "1-70000", "port range"),
            ("--l4-max-flows", "0", "at least 1"),
            ("--l4-max-services", "-3", "-3"),
            ("--on-exit", "linger", "linger"),
        ] {
            let e = run_opts(&[flag, value]).unwrap_err();
            let line = one_line(&e.render().to_string());
            assert!(!line.contains('\n'));
            assert!(line.contains(needle), "{flag} {value}: {line}");
        }
    }

    #[test]
    fn bpf_subcommands() {
        match bpf(&["flows", "--output", "json", "--bpffs-dir", "/sys/fs/bpf/t"]).unwrap() {
            BpfCommand::Flows(o) => {
                assert_eq!(o.output, OutputFormat::Json);
                assert_eq!(o.dir.bpffs_dir, PathBuf::from("/sys/fs/bpf/t"));
            }
            other => panic!("{other:?}"),
        }
        match bpf(&["services"]).unwrap() {
            BpfCommand::Services(o) => {
                assert_eq!(o.output, OutputFormat::Table);
                assert_eq!(o.dir.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(bpf(&["detach"]).unwrap(), BpfCommand::Detach(_)));
        assert!(bpf(&["stats", "--output", "yaml"]).is_err());
        assert!(bpf(&["nothing"]).is_err());
    }

    #[test]
    fn defaults() {
        let o = run_opts(&[]).unwrap();
        assert!(o.interfaces.is_empty());
        assert_eq!(o.xdp_mode, XdpModeArg::Native);
        assert_eq!(o.tc_attach, TcAttachArg::Auto);
        assert_eq!(o.admin_listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(o.http_listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(o.https_listen, Listen(Some("0.0.0.0:443".parse().unwrap())));
        assert!(o.config.ssl_redirect);
        assert_eq!(o.config.default_ssl_certificate, None);
        let p = o.proxy.proxy_config();
        assert_eq!(p.connect_timeout, Duration::from_secs(5));
        assert_eq!(p.read_timeout, Duration::from_secs(60));
        assert_eq!(p.max_body_bytes, 1024 * 1024);
        assert_eq!(o.proxy.drain_timeout, Duration::from_secs(30));
        assert_eq!(o.config.ingress_class, "ingress-ebpf");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("8k"), Ok(8192));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        let o = run_opts(&[
            "--proxy-body-size",
            "10m",
            "--proxy-read-timeout",
            "1500ms",
            "--manifests",
            "a",
            "--manifests",
            "b",
        ])
        .unwrap();
        assert_eq!(o.proxy.proxy_body_size, 10 << 20);
        assert_eq!(o.proxy.proxy_read_timeout, Duration::from_millis(1500));
        assert_eq!(o.config.manifests.len(), 2);
    }

    #[test]
    fn several_interfaces_and_modes() {
        let o = run_opts(&[
            "--interface",
            "eth0",
            "--interface",
            "eth1",
            "--xdp-mode",
            "skb",
            "--tc-attach",
            "netlink",
        ])
        .unwrap();
        assert_eq!(o.interfaces, ["eth0", "eth1"]);
        assert_eq!(o.xdp_mode, XdpModeArg::Skb);
        assert_eq!(o.tc_attach, TcAttachArg::Netlink);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(run_opts(&["--xdp-mode", "turbo"]).is_err());
        assert!(run_opts(&["--tc-attach", "ebpf"]).is_err());
        assert!(run_opts(&["--interface", "a-name-that-is-too-long"]).is_err());
        assert!(run_opts(&["--interface", "a/b"]).is_err());
        assert!(run_opts(&["--admin-listen", "nowhere"]).is_err());
        assert!(run_opts(&["--https-listen", "nowhere"]).is_err());
        assert!(run_opts(&["--default-ssl-certificate", "no-namespace"]).is_err());
    }

    #[test]
    fn tls_flags() {
        let o = run_opts(&[
            "--https-listen",
            "off",
            "--default-ssl-certificate",
            "ingress/wildcard",
            "--ssl-redirect",
            "false",
        ])
        .unwrap();
        assert_eq!(o.https_listen, Listen(None));
        assert_eq!(
            o.config.default_ssl_certificate,
            Some(crate::model::ObjectKey::new("ingress", "wildcard"))
        );
        assert!(!o.config.ssl_redirect);
        let c = o.config.compile_options();
        assert!(!c.ssl_redirect);
    }

    #[test]
    fn usage_errors_fold_to_one_line() {
        let e = run_opts(&["--xdp-mode", "turbo"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'));
        assert!(line.contains("turbo"), "{line}");
        assert!(line.contains("native"), "{line}");
    }
}
