//! Attaches the do-nothing XDP program to an interface (native mode) and
//! keeps it there for at most SECS seconds, or until the process is
//! signalled (the link goes away with the process). On veth,
//! frames another program sends with native-mode `XDP_TX` reach the peer
//! promptly only when the peer runs XDP itself; `cargo xtask bench l4` runs
//! this on the bridge port facing the ingress node (run as root, inside the
//! namespace of the interface): `xdp_peer IFACE SECS`. Prints
//! `attached IFACE` once attached.

use std::time::Duration;

use aya::programs::{Xdp, XdpMode};
use ingress_common::maps::XDP_NOOP_PROGRAM;
use ingress_userspace::datapath::LoadedPrograms;

fn main() -> anyhow::Result<()> {
    use anyhow::Context;
    let mut args = std::env::args().skip(1);
    let (iface, secs) = match (args.next(), args.next().and_then(|s| s.parse::<u64>().ok())) {
        (Some(iface), Some(secs)) => (iface, secs),
        _ => anyhow::bail!("usage: xdp_peer IFACE SECS"),
    };
    let mut programs = LoadedPrograms::load().context("loading the eBPF object (run as root)")?;
    let noop: &mut Xdp = programs
        .ebpf
        .program_mut(XDP_NOOP_PROGRAM)
        .context("the do-nothing program")?
        .try_into()
        .context("an XDP program")?;
    noop.load().context("loading the do-nothing program")?;
    noop.attach(&iface, XdpMode::Driver)
        .with_context(|| format!("attaching to {iface} in native mode"))?;
    println!("attached {iface}");
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}
