//! `ingress run`: wires the data path and the admin listener together and
//! runs until SIGINT or SIGTERM.

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    admin::{self, AdminState},
    cli::RunOpts,
    datapath::{Datapath, DatapathConfig, counters::DatapathCollector},
};

pub fn run(opts: RunOpts) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: RunOpts) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let admin_listener = admin::bind(opts.admin_listen).await?;

    let config = DatapathConfig {
        interfaces: opts.interfaces.clone(),
        xdp_mode: opts.xdp_mode,
    };
    let mut collector = DatapathCollector::default();
    let datapath = if config.enabled() {
        let (dp, maps) = Datapath::start(&config)?;
        collector.maps = maps;
        Some(dp)
    } else {
        tracing::info!("eBPF data path off (no --interface, or --xdp-mode off)");
        None
    };

    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let state = AdminState::new(registry);
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(admin_listener, state.clone(), stop_rx));
    state.set_ready(true);
    tracing::info!(admin = %opts.admin_listen, "agent ready");

    let which = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down");
    state.set_ready(false);
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    if let Some(dp) = datapath {
        dp.detach();
    }
    tracing::info!("stopped");
    Ok(())
}
