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
//! (before 5.16). Exits non-zero if anything was rejected.

use std::process::ExitCode;

use aya::programs::{Program, ProgramError};
use ingress_common::maps::{TC_ICMP6_PROGRAM, TC_PROGRAM, XDP_ICMP6_PROGRAM, XDP_PROGRAM};
use ingress_userspace::datapath::{LoadOptions, open_object};

/// Lines of a rejected program's verifier log that are printed.
const LOG_TAIL: usize = 25;

/// The verifier's closing lines, which follow the reason for a rejection.
fn is_statistics(line: &str) -> bool {
    ["processed ", "verification time ", "stack depth "]
        .iter()
        .any(|p| line.starts_with(p))
}

fn main() -> ExitCode {
    let mut ebpf = match open_object(&LoadOptions::default()) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            println!("kernels: object rejected: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for name in [XDP_PROGRAM, TC_PROGRAM, XDP_ICMP6_PROGRAM, TC_ICMP6_PROGRAM] {
        let result = match ebpf.program_mut(name) {
            Some(Program::Xdp(p)) => p.load().and_then(|()| p.info()),
            Some(Program::SchedClassifier(p)) => p.load().and_then(|()| p.info()),
            Some(_) => {
                println!("kernels: program {name} rejected: unexpected program type");
                ok = false;
                continue;
            }
            None => {
                println!("kernels: program {name} rejected: missing from the object");
                ok = false;
                continue;
            }
        };
        match result {
            Ok(info) => match info.verified_instruction_count() {
                Some(n) => println!("kernels: program {name} verified {n}"),
                None => println!("kernels: program {name} verified ?"),
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
                println!("kernels: program {name} rejected: {io_error}; {last}");
                for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                    println!("kernels: log {line}");
                }
            }
            Err(e) => {
                ok = false;
                println!("kernels: program {name} rejected: {e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
