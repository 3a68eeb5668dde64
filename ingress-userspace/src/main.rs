use std::process::ExitCode;

use ingress_userspace::{agent, check, cli, inspect, telemetry};

/// The proxy allocates small, short-lived buffers on every request; mimalloc
/// serves those with far less overhead than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
        cli::Command::Bpf(cmd) => inspect::run(&cmd),
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
