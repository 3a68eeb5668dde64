//! Loads the eBPF object and each of its four programs into the running
//! kernel, as the agent does, one program at a time so that one rejection
//! does not hide the others. Prints one line per program for `cargo xtask
//! kernels`, which runs it inside a virtual machine on older kernels:
//!
//! ```text
//! kernels: program ingress_xdp verified 640780
//! kernels: program ingress_tc_egress rejected: <errno>; <verifier's last line>
//! kernels: log <one of the verifier log's last lines>
//! ```
//!
//! `verified` is followed by `?` where the kernel does not report the count
//! (before 5.16). The object is loaded twice: as is, and with SNAT
//! addresses set (names suffixed `+snat`). Then the attach check (see
//! `attach.rs`) runs the agent's load, attach, restart and detach on a veth,
//! with TC egress as a netlink filter and, from 6.6, as a TCX link:
//!
//! ```text
//! kernels: attach netlink ok: 3 frames a step counted once each (attached, kept, adopted; twice with a second filter), none after detach
//! ```
//!
//! Exits non-zero if a program was rejected (the guest then runs no
//! fixture); `cargo xtask kernels` reads the attach lines.

mod attach;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::ExitCode,
};

use aya::programs::{Program, ProgramError};
use ingress_common::maps::{
    TC_ICMP6_PROGRAM, TC_PROGRAM, XDP_ICMP6_PROGRAM, XDP_L4_NEW_PROGRAM, XDP_L4_PROGRAM,
    XDP_PROGRAM,
};
use ingress_userspace::{
    cli::TcAttachArg,
    datapath::{LoadOptions, open_object, tc_attach},
};

/// Lines of a rejected program's verifier log that are printed.
const LOG_TAIL: usize = 25;

/// The verifier's closing lines, which follow the reason for a rejection.
fn is_statistics(line: &str) -> bool {
    ["processed ", "verification time ", "stack depth "]
        .iter()
        .any(|p| line.starts_with(p))
}

fn main() -> ExitCode {
    // As the agent loads them without and with a SNAT address (remote
    // backends): the address is a load-time constant, and with it the
    // verifier walks the SNAT port search as well.
    let snat = LoadOptions {
        snat_ipv4: Some(Ipv4Addr::new(198, 18, 0, 1)),
        snat_ipv6: Some("fd00::1".parse().unwrap_or(Ipv6Addr::LOCALHOST)),
        ..LoadOptions::default()
    };
    let mut ok = true;
    for (suffix, opts) in [("", LoadOptions::default()), ("+snat", snat)] {
        ok &= check(suffix, &opts);
    }
    let mut modes = vec![TcAttachArg::Netlink];
    if tc_attach::resolve(TcAttachArg::Auto, tc_attach::running_kernel()) == tc_attach::TcMode::Tcx
    {
        modes.push(TcAttachArg::Tcx);
    }
    match attach::setup_namespace() {
        Ok(()) => {
            for mode in modes {
                println!("{}", attach::check(mode));
            }
        }
        Err(e) => {
            println!("kernels: attach netlink failed: setting up the veth: {e}");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Loads the object with `opts` and each program; prints a line per
/// program, its name followed by `suffix`. Whether all verified.
fn check(suffix: &str, opts: &LoadOptions) -> bool {
    let mut ebpf = match open_object(opts) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            println!("kernels: object{suffix} rejected: {e}");
            return false;
        }
    };
    let mut ok = true;
    for name in [
        XDP_PROGRAM,
        XDP_L4_PROGRAM,
        XDP_L4_NEW_PROGRAM,
        TC_PROGRAM,
        XDP_ICMP6_PROGRAM,
        TC_ICMP6_PROGRAM,
    ] {
        let label = format!("{name}{suffix}");
        let result = match ebpf.program_mut(name) {
            Some(Program::Xdp(p)) => p.load().and_then(|()| p.info()),
            Some(Program::SchedClassifier(p)) => p.load().and_then(|()| p.info()),
            Some(_) => {
                println!("kernels: program {label} rejected: unexpected program type");
                ok = false;
                continue;
            }
            None => {
                println!("kernels: program {label} rejected: missing from the object");
                ok = false;
                continue;
            }
        };
        match result {
            Ok(info) => match info.verified_instruction_count() {
                Some(n) => println!("kernels: program {label} verified {n}"),
                None => println!("kernels: program {label} verified ?"),
            },
            Err(ProgramError::LoadError {
                io_error,
                verifier_log,
            }) => {
                ok = false;
                let log = verifier_log.to_string();
                let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                // The reason comes before the statistics lines.
                let last = lines
                    .iter()
                    .rev()
                    .find(|l| !is_statistics(l))
                    .copied()
                    .unwrap_or("(empty verifier log)");
                println!("kernels: program {label} rejected: {io_error}; {last}");
                for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                    println!("kernels: log {line}");
                }
            }
            Err(e) => {
                ok = false;
                println!("kernels: program {label} rejected: {e}");
            }
        }
    }
    ok
}
