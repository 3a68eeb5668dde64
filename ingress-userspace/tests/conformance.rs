//! Kubernetes Ingress v1 conformance: every scenario of the upstream Gherkin
//! suite, run against the real `ingress` binary in standalone mode.
//!
//! The `.feature` files are read at run time from
//! `<workspace root>/../shared/conformance/ingress-v1` (never copied into the
//! project). Each scenario gets its own agent (own manifests directory, own
//! loopback ports) and its own echo "pods" on distinct 127.x.y.z addresses.
//! Output: one line per scenario, then `N passed, M failed, K skipped`; the
//! exit code is non-zero when a scenario failed or none passed.
//!
//! Run: `cargo test -p ingress-userspace --test conformance`.

#[path = "conformance/agent.rs"]
mod agent;
#[path = "conformance/client.rs"]
mod client;
#[path = "conformance/echo.rs"]
mod echo;
#[path = "conformance/parser.rs"]
mod parser;
#[path = "conformance/report.rs"]
mod report;
#[path = "conformance/world.rs"]
mod world;

use std::{path::PathBuf, process::ExitCode};

use cucumber::{Cucumber, writer};
use futures::FutureExt as _;

/// Scenarios run at once (each has an agent; the machine has 2 cores).
const CONCURRENCY: usize = 4;

/// `<workspace root>/../shared/conformance/ingress-v1`.
fn features_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("shared")
        .join("conformance")
        .join("ingress-v1")
}

fn fail_setup(why: &str) -> ExitCode {
    println!("FAIL     conformance suite: {why}");
    println!("0 passed, 1 failed, 0 skipped");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    // Test listers (IDEs, nextest) ask for the list of tests: there is one.
    if std::env::args().any(|a| a == "--list") {
        println!("conformance: test");
        return ExitCode::SUCCESS;
    }
    let dir = features_dir();
    let files = match parser::feature_files(&dir) {
        Ok(files) => files,
        Err(e) => {
            return fail_setup(&format!(
                "cannot read the conformance features directory {}: {e} (expected the shared \
                 Ingress v1 suite at <workspace root>/../shared/conformance/ingress-v1)",
                dir.display()
            ));
        }
    };
    if files.is_empty() {
        return fail_setup(&format!("no .feature file in {}", dir.display()));
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail_setup(&format!("starting the async runtime: {e}")),
    };
    // Step failures are panics that cucumber catches and the report prints;
    // the default hook would print each one a second time.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));

    let finished = runtime.block_on(
        Cucumber::<world::IngressWorld, _, PathBuf, _, _>::new()
            .with_parser(parser::Features)
            .with_writer(writer::Normalize::new(report::Report::default()))
            .steps(world::steps())
            .max_concurrent_scenarios(CONCURRENCY)
            .after(|_, _, _, _, world| {
                async move {
                    if let Some(w) = world {
                        w.teardown();
                    }
                }
                .boxed_local()
            })
            .with_default_cli()
            .run(dir),
    );
    std::panic::set_hook(default_hook);

    let report: &report::Report = &finished;
    println!("{}", report.summary());
    let ran = report.passed + report.failed;
    if report.failed > 0 || ran == 0 || report.passed == 0 {
        if ran == 0 {
            eprintln!("no conformance scenario ran");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
