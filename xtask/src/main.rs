use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check the prerequisites and install what is missing (Debian packages,
    /// nightly rust-src, bpf-linker built against LLVM 22, and the deploy
    /// tests' kubectl and kubernetes-validate).
    Setup {
        /// Only what `cargo build` needs (the container image build).
        #[arg(long)]
        build_only: bool,
    },
    /// Build the eBPF object for bpfel-unknown-none and report on it.
    BuildEbpf,
    /// Run every check and test: fmt, clippy, unit, packet fixtures, end to end.
    Test,
    /// Build everything, bring up a namespace topology, send real traffic
    /// through the attached programs and show the counters moving.
    Demo,
    /// Verify the eBPF programs and run the packet fixtures on older
    /// kernels (Debian 11's 5.10, Debian 12's 6.1 and its backports' 6.12) booted under qemu, and on
    /// this machine's; prints a table per kernel.
    Kernels {
        /// Only these Debian suites (bullseye, bookworm, bookworm-backports); all if none.
        suites: Vec<String>,
        /// Load the programs only; run no packet fixture (minutes instead of
        /// half an hour per kernel under emulation).
        #[arg(long)]
        verify_only: bool,
    },
    /// Benchmark on loopback against a reference run side by side, and
    /// write the results into docs/benchmarks.md.
    Bench {
        /// Which bench.
        #[arg(value_enum)]
        what: xtask::bench::What,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { build_only } => xtask::setup::run(build_only),
        Task::BuildEbpf => xtask::build_ebpf::run().map(|_| ()),
        Task::Test => xtask::test::run(),
        Task::Demo => xtask::demo::run(),
        Task::Kernels {
            suites,
            verify_only,
        } => xtask::kernels::run(&suites, verify_only),
        Task::Bench { what } => xtask::bench::run(what),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
