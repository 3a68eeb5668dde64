//! Command-line contract of the `ingress` binary (see docs/architecture.md).

use std::{net::SocketAddr, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Run(RunOpts),
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

    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub admin_listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Native,
    Skb,
    Off,
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
            Command::Run(o) => o,
        })
    }

    #[test]
    fn defaults() {
        let o = run_opts(&[]).unwrap();
        assert!(o.interfaces.is_empty());
        assert_eq!(o.xdp_mode, XdpModeArg::Native);
        assert_eq!(o.admin_listen, "127.0.0.1:9100".parse().unwrap());
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
        ])
        .unwrap();
        assert_eq!(o.interfaces, ["eth0", "eth1"]);
        assert_eq!(o.xdp_mode, XdpModeArg::Skb);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(run_opts(&["--xdp-mode", "turbo"]).is_err());
        assert!(run_opts(&["--interface", "a-name-that-is-too-long"]).is_err());
        assert!(run_opts(&["--interface", "a/b"]).is_err());
        assert!(run_opts(&["--admin-listen", "nowhere"]).is_err());
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
