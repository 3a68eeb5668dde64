//! `ingress run`: wires the config source, compile, the proxy, the data
//! path and the admin listener together, and runs until SIGINT or SIGTERM.

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

use crate::{
    admin::{self, AdminState},
    cli::{ConfigOpts, OnExit, RunOpts},
    cluster::{addresses, events, lease, status},
    datapath::{
        Datapath, DatapathConfig, LoadOptions, counters::DatapathCollector, l4maps::L4Maps,
        pin::PinLayout,
    },
    healthcheck::HealthChecks,
    metrics::{CertExpiryCollector, ProxyMetrics},
    model::{ClusterState, CompileOptions, Diagnostic, Severity, compile_at},
    proxy::{Proxy, listen, server, tls},
    source::{cluster, files},
};

/// How long file events settle before a reload (an editor's save is often
/// several events).
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(15);

/// The control runtime (admin, config source, eBPF logs, signals) is small;
/// the proxy runs on its own worker threads.
pub fn run(opts: RunOpts) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("control")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(opts))
}

/// Runs one proxy worker on its own thread and current-thread runtime until
/// shutdown and drain are over.
fn spawn_worker(
    index: usize,
    listeners: Vec<(std::net::TcpListener, Option<TlsAcceptor>)>,
    proxy: Arc<Proxy>,
    stop: watch::Receiver<bool>,
    drain: std::time::Duration,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("proxy-{index}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, worker = index, "starting a proxy worker runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let mut registered = Vec::new();
                for (l, tls) in listeners {
                    match TcpListener::from_std(l) {
                        Ok(tcp) => registered.push(server::Listener { tcp, tls }),
                        Err(e) => {
                            tracing::error!(error = %e, worker = index, "registering a listener");
                            return;
                        }
                    }
                }
                server::serve(registered, proxy, stop, drain).await
            });
        })
        .context("starting a proxy worker thread")
}

async fn run_async(opts: RunOpts) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let admin_listener = admin::bind(opts.admin_listen).await?;
    let workers = opts.proxy.worker_count();
    let http_listeners = listen::bind(opts.http_listen, workers)
        .map_err(|e| anyhow::anyhow!("binding the HTTP listener on {}: {e}", opts.http_listen))?;
    let https_listeners: Vec<Option<std::net::TcpListener>> = match opts.https_listen.0 {
        Some(addr) => listen::bind(addr, workers)
            .map_err(|e| anyhow::anyhow!("binding the HTTPS listener on {addr}: {e}"))?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..workers).map(|_| None).collect(),
    };

    let dp_config = DatapathConfig {
        interfaces: opts.interfaces.clone(),
        xdp_mode: opts.xdp_mode,
        tc_attach: opts.tc_attach,
        load: load_options(&opts),
    };
    let mut collector = DatapathCollector::default();
    let mut l4_maps = None;
    // Loaded now, attached once the first configuration fills the maps.
    let mut datapath = if dp_config.enabled() {
        let (dp, maps, l4) = Datapath::load(&dp_config)?;
        collector.maps = maps;
        l4_maps = Some(l4);
        Some(dp)
    } else {
        tracing::info!("eBPF data path off (no --interface, or --xdp-mode off)");
        None
    };

    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let metrics = Arc::new(ProxyMetrics::register(&mut registry));
    let mut proxy_config = opts.proxy.proxy_config();
    proxy_config.https_port = opts.https_listen.0.map(|a| a.port());
    let proxy = Proxy::new(proxy_config, metrics.clone());
    registry.register_collector(Box::new(CertExpiryCollector {
        proxy: proxy.clone(),
    }));
    let cluster_latency = opts
        .config
        .manifests
        .is_empty()
        .then(|| cluster::register_latency(&mut registry));
    let event_metrics = opts
        .config
        .manifests
        .is_empty()
        .then(|| events::EventMetrics::register(&mut registry));
    let state = AdminState::new(registry);
    let acceptor = match opts.https_listen.0 {
        Some(_) => Some(tls::acceptor(proxy.clone()).context("setting up TLS")?),
        None => None,
    };
    // What `/status/ingresses` shows in standalone mode (in cluster mode,
    // what the API shows, as the Lease holder wrote it: see `start_source`).
    let status_addresses: Vec<String> = if opts.publish_status_address.is_empty() {
        (!opts.http_listen.ip().is_unspecified())
            .then(|| opts.http_listen.ip().to_string())
            .into_iter()
            .collect()
    } else {
        opts.publish_status_address.clone()
    };
    state.update_status(|s| {
        s.addresses = status_addresses
            .iter()
            .map(|a| addresses::entry(a))
            .collect()
    });
    let status_source =
        addresses::Source::from_flags(&opts.publish_status_address, opts.publish_service.as_ref());
    let applier = Applier {
        proxy: proxy.clone(),
        admin: state.clone(),
        compile_options: opts.config.compile_options(),
        problems: None,
        generation: 0,
        l4_maps,
        health: HealthChecks::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let (source_task, lease_task) = start_source(
        &opts.config,
        applier,
        cluster_latency,
        status_source,
        event_metrics,
        stop_rx.clone(),
    )
    .await?;
    if let Some(dp) = &mut datapath {
        dp.attach(&dp_config)?;
    }
    // Served once the programs are attached, so /readyz never answers 200
    // before they run.
    let admin_task = tokio::spawn(admin::serve(admin_listener, state.clone(), stop_rx.clone()));
    let mut worker_threads = Vec::new();
    for (i, (l, tl)) in http_listeners.into_iter().zip(https_listeners).enumerate() {
        let mut listeners = vec![(l, None)];
        if let Some(tl) = tl {
            listeners.push((tl, acceptor.clone()));
        }
        worker_threads.push(spawn_worker(
            i,
            listeners,
            proxy.clone(),
            stop_rx.clone(),
            opts.proxy.drain_timeout,
        )?);
    }
    let https = opts
        .https_listen
        .0
        .map_or("off".to_string(), |a| a.to_string());
    tracing::info!(http = %opts.http_listen, https, admin = %opts.admin_listen, workers, "agent ready");

    let which = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down: not ready, draining");
    state.set_ready(false);
    // Also tells the Lease loop to stop leading and release its Leases
    // (within lease::RELEASE_TIMEOUT; the last agent of the class first
    // clears the status it published), while the proxy drains.
    let _ = stop_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || {
        for t in worker_threads {
            let _ = t.join();
        }
    })
    .await;
    if let Some(lease_task) = lease_task {
        // Bounded inside; this bound only guards against a stuck task.
        let bound = status::SHUTDOWN_CLEAR_TIMEOUT + lease::RELEASE_TIMEOUT * 2;
        let _ = tokio::time::timeout(bound, lease_task).await;
    }
    source_task.abort();
    let _ = admin_task.await;
    match (datapath, opts.on_exit) {
        (Some(dp), OnExit::Keep) => dp.keep(),
        (Some(dp), OnExit::Detach) => dp.detach(),
        (None, _) => {}
    }
    tracing::info!("stopped");
    Ok(())
}

/// The load-time settings of the eBPF programs from the command line.
fn load_options(opts: &RunOpts) -> LoadOptions {
    let l4 = &opts.l4;
    LoadOptions {
        snat_ipv4: opts.config.node_ips.iter().find_map(|ip| match ip {
            std::net::IpAddr::V4(a) => Some(*a),
            std::net::IpAddr::V6(_) => None,
        }),
        snat_ipv6: opts.config.node_ips.iter().find_map(|ip| match ip {
            std::net::IpAddr::V6(a) => Some(*a),
            std::net::IpAddr::V4(_) => None,
        }),
        snat_port_min: l4.snat_port_range.min,
        snat_port_span: l4.snat_port_range.span(),
        max_services: l4.l4_max_services,
        max_backends: l4.l4_max_backends,
        max_flows: l4.l4_max_flows,
        maglev_size: l4.maglev_table_size,
        pins: Some(PinLayout::new(opts.bpffs.bpffs_dir.clone())),
        new_flow_rate: l4.l4_new_flow_rate,
        close_timeout_s: l4.l4_close_timeout.as_secs().try_into().unwrap_or(u32::MAX),
    }
}

/// Starts the configuration source: manifests (watched), the API server
/// (`--kubeconfig`, or the in-cluster configuration when neither is given),
/// or, outside a cluster with neither, an empty configuration. With
/// manifests the first snapshot is applied before this returns; in cluster
/// mode once every watcher has listed (readiness follows it). In cluster
/// mode it also starts the Lease loop and the status writer (`status`: where
/// the addresses come from); the second handle is the Lease loop, which
/// ends once `stop` turns true and its Leases are released.
async fn start_source(
    config: &ConfigOpts,
    mut applier: Applier,
    cluster_latency: Option<prometheus_client::metrics::histogram::Histogram>,
    status: addresses::Source,
    event_metrics: Option<events::EventMetrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(
    tokio::task::JoinHandle<()>,
    Option<tokio::task::JoinHandle<()>>,
)> {
    if config.manifests.is_empty() {
        let source = match &config.kubeconfig {
            Some(path) => cluster::ClientSource::Kubeconfig(path),
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                cluster::ClientSource::InCluster
            }
            None => {
                tracing::warn!(
                    "no --manifests or --kubeconfig given and not in a cluster \
                     (KUBERNETES_SERVICE_HOST unset): serving an empty configuration"
                );
                applier.apply(&ClusterState::default(), Vec::new(), Instant::now());
                return Ok((tokio::spawn(async {}), None));
            }
        };
        let client = cluster::client(source).await?;
        tracing::info!(namespace = ?config.watch_namespace, "cluster mode: watching the API server");
        let (view_tx, view_rx) = watch::channel(status::View::default());
        let (leader_tx, leader_rx) = watch::channel(None);
        let node = config.node_name();
        let identity = format!("{node}_{}", std::process::id());
        let namespace = client.default_namespace().to_string();
        let publish_service = match &status {
            addresses::Source::Service(key) => Some(key.clone()),
            _ => None,
        };
        tracing::info!(
            lease = %lease::election_name(&config.ingress_class),
            namespace = %namespace,
            identity = %identity,
            addresses = ?status,
            "writing Ingress status and Events when leader"
        );
        let elector = lease::Elector::new(
            client.clone(),
            &namespace,
            &config.ingress_class,
            &identity,
            Some(node.as_str()),
        );
        let (shutdown_tx, shutdown_rx) = tokio::sync::mpsc::channel(1);
        let lease_task = tokio::spawn(lease::run(
            elector,
            leader_tx,
            stop,
            config.update_status_on_shutdown.then_some(shutdown_tx),
        ));
        let (problems_tx, problems_rx) = watch::channel(Vec::new());
        applier.problems = Some(problems_tx);
        let events_writer = tokio::spawn(events::run(
            events::Writer::new(
                client.clone(),
                config.node_name(),
                event_metrics.unwrap_or_default(),
            ),
            problems_rx,
            leader_rx.clone(),
        ));
        let shown = tokio::spawn(show_api_status(applier.admin.clone(), view_rx.clone()));
        let writer = tokio::spawn(status::run(
            status::Writer::new(client.clone(), status),
            view_rx,
            leader_rx,
            shutdown_rx,
        ));
        let watchers = cluster::start(
            client,
            config.watch_namespace.clone(),
            cluster_latency.unwrap_or_else(|| cluster::register_latency(&mut Registry::default())),
            Some(cluster::StatusFeed {
                tx: view_tx,
                publish_service,
            }),
            move |update, diags, started| match update {
                cluster::Update::Full(state) => Some(applier.apply(&state, diags, started)),
                cluster::Update::Endpoints { services, current } => {
                    applier.apply_endpoints(&services, &current, started)
                }
            },
        );
        let source_task = tokio::spawn(async move {
            // Aborting this task aborts the watchers and the status and Events
            // writers.
            struct AbortAll(Vec<tokio::task::JoinHandle<()>>);
            impl Drop for AbortAll {
                fn drop(&mut self) {
                    for t in &self.0 {
                        t.abort();
                    }
                }
            }
            let _guard = AbortAll(vec![writer, events_writer, watchers, shown]);
            std::future::pending::<()>().await
        });
        return Ok((source_task, Some(lease_task)));
    }
    let paths = config.manifests.clone();
    let (watcher, mut events) = files::watch(&paths)?;
    let started = Instant::now();
    let mut cache = files::ManifestCache::default();
    let (state, diags) = cache.load(&paths);
    applier.apply(&state, diags, started);
    let task = tokio::spawn(async move {
        let _watcher = watcher;
        while events.recv().await.is_some() {
            let started = Instant::now();
            tokio::time::sleep(DEBOUNCE).await;
            while events.try_recv().is_ok() {}
            let paths = paths.clone();
            let mut c = std::mem::take(&mut cache);
            let loaded = tokio::task::spawn_blocking(move || {
                let out = c.load(&paths);
                (c, out)
            })
            .await;
            match loaded {
                Ok((c, (state, diags))) => {
                    cache = c;
                    applier.apply(&state, diags, started);
                }
                Err(e) => tracing::error!(error = %e, "reloading manifests"),
            }
        }
    });
    Ok((task, None))
}

/// Cluster mode: `/status/ingresses` shows what the API shows on each
/// served Ingress, following the status writer's views.
async fn show_api_status(admin: Arc<AdminState>, mut view: watch::Receiver<status::View>) {
    loop {
        let shown = view
            .borrow_and_update()
            .ingresses
            .iter()
            .filter(|(_, (served, _))| *served)
            .map(|(key, (_, now))| (key.clone(), now.clone()))
            .collect();
        admin.update_status(|s| s.shown = Some(shown));
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// Compiles states and swaps the results in.
struct Applier {
    proxy: Arc<Proxy>,
    admin: Arc<AdminState>,
    compile_options: CompileOptions,
    /// What `/status/ingresses` shows.
    /// Cluster mode: where each snapshot's Ingress problems go, for the
    /// Events writer.
    problems: Option<watch::Sender<Vec<events::Problem>>>,
    generation: i64,
    /// The eBPF L4 maps, when the data path is attached.
    l4_maps: Option<L4Maps>,
    /// healthCheckNodePort listeners of Local-policy Services.
    health: HealthChecks,
}

impl Applier {
    /// Returns the Ingresses the applied snapshot serves.
    fn apply(
        &mut self,
        state: &ClusterState,
        source_diags: Vec<Diagnostic>,
        started: Instant,
    ) -> Vec<crate::model::ObjectKey> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let previous = self.proxy.snapshot();
        let mut snapshot = compile_at(state, &self.compile_options, Some(&previous), now);
        drop(previous);
        if !source_diags.is_empty() {
            let mut diags = source_diags;
            diags.extend(snapshot.diagnostics.iter().cloned());
            snapshot.diagnostics = Arc::new(diags);
        }
        if let Some(tx) = &self.problems {
            tx.send_replace(events::problems(state, &snapshot.diagnostics));
        }
        for d in snapshot.diagnostics.iter() {
            match d.severity {
                Severity::Error => {
                    tracing::error!(object = %d.object, field = %d.field, "{}", d.message)
                }
                Severity::Warning => {
                    tracing::warn!(object = %d.object, field = %d.field, "{}", d.message)
                }
            }
        }
        self.generation += 1;
        self.health.apply(&snapshot.l4);
        if let Some(maps) = &mut self.l4_maps {
            match maps.apply(&snapshot.l4) {
                Ok(skipped) => {
                    for e in skipped {
                        tracing::error!(error = %e, "L4 service skipped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "writing the L4 maps"),
            }
        }
        let served_hosts = snapshot
            .served
            .iter()
            .map(|s| (s.key.clone(), s.hosts.clone()))
            .collect();
        let served = snapshot.served.iter().map(|s| s.key.clone()).collect();
        let (routes, backends, diagnostics) = (
            snapshot.router.tables().len(),
            snapshot.backends.len(),
            snapshot.diagnostics.len(),
        );
        self.proxy.apply(snapshot);
        self.admin.update_status(|s| s.served = served_hosts);
        self.admin.set_ready(true);
        let m = &self.proxy.metrics;
        m.snapshot_generation.set(self.generation);
        m.snapshot_apply_seconds
            .set(started.elapsed().as_secs_f64());
        m.config_diagnostics.set(diagnostics as i64);
        tracing::info!(
            generation = self.generation,
            hosts = routes,
            backends,
            diagnostics,
            apply_ms = started.elapsed().as_secs_f64() * 1e3,
            "configuration applied"
        );
        served
    }
}

impl Applier {
    /// Swaps in the previous snapshot with the endpoints of `services`
    /// resolved again from `current` (which holds those Services and their
    /// EndpointSlices), when only EndpointSlices changed since it was
    /// applied. None when that needs a full compile.
    fn apply_endpoints(
        &mut self,
        services: &std::collections::BTreeSet<crate::model::ObjectKey>,
        current: &ClusterState,
        started: Instant,
    ) -> Option<Vec<crate::model::ObjectKey>> {
        let previous = self.proxy.snapshot();
        let snapshot = crate::model::refresh::refresh_endpoints(&previous, current, services)?;
        drop(previous);
        self.generation += 1;
        // What is served did not change (and the caller only needs it after
        // a full update): no copy of 10,000 keys per endpoint move.
        let served = Vec::new();
        let backends = snapshot.backends.len();
        self.proxy.apply(snapshot);
        let m = &self.proxy.metrics;
        m.snapshot_generation.set(self.generation);
        m.snapshot_apply_seconds
            .set(started.elapsed().as_secs_f64());
        tracing::info!(
            generation = self.generation,
            services = services.len(),
            backends,
            apply_ms = started.elapsed().as_secs_f64() * 1e3,
            "endpoints applied"
        );
        Some(served)
    }
}
