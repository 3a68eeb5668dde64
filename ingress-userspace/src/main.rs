use std::process::ExitCode;

use ingress_userspace::{agent, check, cli, inspect, telemetry};

/// The proxy allocates small, short-lived buffers on every request; mimalloc
/// serves those with far less overhead than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages (`madvise`) on its arenas, and
/// the kernel then zeroes 2 MiB at every first touch. At 10,000 Ingresses
/// that was most of the cold start's CPU (0.6-0.75 s of system time against
/// 0.14-0.18 s without, same binary and machine) and 10% more memory. The
/// process opts out (the kernel checks the flag at every fault, so arenas
/// mimalloc already set up follow too), unless `MIMALLOC_ALLOW_THP` says
/// otherwise.
fn without_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl with integer arguments only; a failure leaves THP on.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

fn main() -> ExitCode {
    without_transparent_huge_pages();
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(exit) => return exit,
    };
    telemetry::init(cli.log_format);
    let result = match cli.command {
        cli::Command::Run(opts) => agent::run(*opts),
        cli::Command::Check(opts) => match check::run(&opts) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        cli::Command::Bpf(cmd) => {
            if let cli::BpfCommand::Detach(d) = &cmd {
                // Netlink TC filters are no pins: removed by their markers,
                // before the pin directory (and the markers) go.
                let layout = ingress_userspace::datapath::pin::PinLayout::new(d.bpffs_dir.clone());
                for iface in ingress_userspace::datapath::tc_attach::detach_marked(&layout) {
                    println!("removed the TC egress filter of {iface}");
                }
            }
            inspect::run(&cmd)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the cause, as operators read it in `kubectl logs`.
            eprintln!("ingress: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
