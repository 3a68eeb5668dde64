//! The attach check: the agent's own `Datapath` loads and attaches the
//! programs (skb XDP, TC egress in one `--tc-attach` mode, pinned) to a
//! veth in a network namespace of this process, leaves them attached
//! (`--on-exit keep`), a second load adopts them as a restarted agent does,
//! then detaches. Between the steps UDP frames leave through the veth and
//! the TC egress counters (the pinned `TC_COUNTERS` map) must go up by
//! exactly one per frame: one program runs, never none, never two. In
//! netlink mode a control shows that two would be seen: a second filter
//! (another load of the program, on the same pinned counters, at the next
//! priority) makes each frame count twice until it is removed. Prints
//!
//! ```text
//! kernels: attach netlink ok: ...
//! kernels: attach tcx failed: <step>: <error>
//! ```

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
};

use aya::programs::{
    TcAttachType,
    tc::{NlOptions, TcAttachOptions},
};
use ingress_common::counters::Counter;
use ingress_userspace::{
    cli::{TcAttachArg, XdpModeArg},
    datapath::{
        Datapath, DatapathConfig, LoadOptions, LoadedPrograms,
        counters::{CounterMap, Hook},
        pin::PinLayout,
        tc_attach,
    },
};

/// The veth the programs attach to, and its peer.
const IFACE: &str = "kcheck0";
const PEER: &str = "kcheck1";
/// Frames sent per step.
const FRAMES: u64 = 3;
const SOURCE: &str = "198.18.0.1";
const TARGET: &str = "198.18.0.2:9";

/// Moves the process into a network namespace of its own with the veth
/// pair up, IPv6 off (no router or neighbour solicitations counted) and a
/// permanent neighbour entry for the target (no ARP).
pub fn setup_namespace() -> Result<(), String> {
    // SAFETY: unshare with a flag only; the process has one thread here.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    for p in ["all", "default"] {
        // Absent without IPv6: nothing to turn off then.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{p}/disable_ipv6"), "1");
    }
    let target_ip = TARGET.split(':').next().unwrap_or_default();
    for args in [
        vec!["link", "add", IFACE, "type", "veth", "peer", "name", PEER],
        vec!["addr", "add", &format!("{SOURCE}/24"), "dev", IFACE],
        vec!["link", "set", IFACE, "up"],
        vec!["link", "set", PEER, "up"],
        vec![
            "neigh",
            "replace",
            target_ip,
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            IFACE,
            "nud",
            "permanent",
        ],
    ] {
        let out = Command::new("ip")
            .args(&args)
            .output()
            .map_err(|e| format!("running ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Runs the check in `mode`; the line to print.
pub fn check(mode: TcAttachArg) -> String {
    let name = match mode {
        TcAttachArg::Auto => "auto",
        TcAttachArg::Tcx => "tcx",
        TcAttachArg::Netlink => "netlink",
    };
    let root = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/ingress-kernel-check-{}-{name}",
        std::process::id()
    ));
    let layout = PinLayout::new(&root);
    let result = run(mode, &layout);
    // Whatever happened, nothing stays pinned (and so attached).
    let _ = layout.remove_all();
    match result {
        Ok(what) => format!("kernels: attach {name} ok: {what}"),
        Err(e) => format!("kernels: attach {name} failed: {e}"),
    }
}

fn run(mode: TcAttachArg, layout: &PinLayout) -> Result<String, String> {
    let config = DatapathConfig {
        interfaces: vec![IFACE.to_string()],
        xdp_mode: XdpModeArg::Skb,
        tc_attach: mode,
        load: LoadOptions {
            pins: Some(layout.clone()),
            ..LoadOptions::default()
        },
    };
    // The log forwarder is a tokio task.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a tokio runtime: {e}"))?;
    let _entered = runtime.enter();
    let socket = UdpSocket::bind(format!("{SOURCE}:0")).map_err(|e| format!("binding: {e}"))?;
    let target: SocketAddr = TARGET.parse().map_err(|e| format!("{e}"))?;

    let (mut first, counters, _l4) =
        Datapath::load(&config).map_err(|e| format!("first load: {e}"))?;
    first
        .attach(&config)
        .map_err(|e| format!("first attach: {e:#}"))?;
    // The TC array, pinned: the second load adopts it, and this handle
    // reads it to the end.
    let tc = counters
        .into_iter()
        .find(|c| c.hook == Hook::Tc)
        .ok_or("no TC counters")?;
    let step = |what: &str, expected: u64| -> Result<(), String> {
        let before = counted(&tc)?;
        for _ in 0..FRAMES {
            socket
                .send_to(b"kernel check", target)
                .map_err(|e| format!("{what}: sending: {e}"))?;
        }
        let got = counted(&tc)?;
        let delta = (got.0 - before.0, got.1 - before.1);
        if delta != (expected, expected) {
            return Err(format!(
                "{what}: {FRAMES} frames counted {} times (packets) and {} times (IPv4 UDP), not {expected}",
                delta.0, delta.1
            ));
        }
        Ok(())
    };
    step("attached", FRAMES)?;
    first.keep();
    step("between the two agents", FRAMES)?;
    let (mut second, _counters, _l4) =
        Datapath::load(&config).map_err(|e| format!("second load: {e}"))?;
    second
        .attach(&config)
        .map_err(|e| format!("second attach: {e:#}"))?;
    step("after the restart", FRAMES)?;
    if mode == TcAttachArg::Netlink {
        let control = second_filter(layout)?;
        step("control: a second filter", 2 * FRAMES)?;
        drop(control);
        step("control removed", FRAMES)?;
    }
    second.detach();
    step("after detach", 0)?;
    Ok(format!(
        "{FRAMES} frames a step counted once each (attached, kept, adopted{}), none after detach",
        if mode == TcAttachArg::Netlink {
            "; twice with a second filter"
        } else {
            ""
        }
    ))
}

/// Another load of the programs (on the same pinned state maps, the TC
/// counters among them) with its TC program in a second filter, one
/// priority after the agent's; removed when the returned value drops.
fn second_filter(layout: &PinLayout) -> Result<LoadedPrograms, String> {
    let mut programs = LoadedPrograms::load_with(&LoadOptions {
        pins: Some(layout.clone()),
        ..LoadOptions::default()
    })
    .map_err(|e| format!("control load: {e}"))?;
    programs
        .tc()
        .map_err(|e| format!("control: {e}"))?
        .attach_with_options(
            IFACE,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions {
                priority: tc_attach::FILTER_PRIORITY + 1,
                ..NlOptions::default()
            }),
        )
        .map_err(|e| format!("control attach: {e}"))?;
    Ok(programs)
}

/// The TC counters `Packets` and `Ipv4Udp`.
fn counted(tc: &CounterMap) -> Result<(u64, u64), String> {
    let get = |c| {
        tc.get(c)
            .map_err(|e| format!("reading the TC counters: {e}"))
    };
    Ok((get(Counter::Packets)?, get(Counter::Ipv4Udp)?))
}
