//! The kernel side of the agent: load the embedded eBPF object, attach XDP
//! and TC egress to the uplinks, forward the programs' logs, read counters,
//! and detach on shutdown.

pub mod counters;
pub mod flow_sweep;
pub mod l4maps;
pub mod l4sync;
pub mod object;
pub mod privileges;

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId,
        xdp::XdpLinkId,
    },
};
use ingress_common::maps::{TC_COUNTERS, TC_PROGRAM, XDP_COUNTERS, XDP_PROGRAM};
use thiserror::Error;
use tokio::io::{Interest, unix::AsyncFd};

use crate::cli::XdpModeArg;
use counters::{CounterMap, Hook};

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(
        "missing privileges to load eBPF programs: the process lacks {0} (run as root, or grant these capabilities)"
    )]
    Privileges(String),
    #[error("interface '{0}' does not exist")]
    UnknownInterface(String),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("opening map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("loading program {name} into the kernel: {source}")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching XDP in {mode} mode to '{interface}': {source}")]
    AttachXdp {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching TC egress to '{interface}': {source}")]
    AttachTc {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("reading {hook} counters: {source}")]
    ReadCounters {
        hook: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// How the programs attach.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeArg,
    pub load: LoadOptions,
}

impl DatapathConfig {
    /// Whether there is anything to attach at all.
    pub fn enabled(&self) -> bool {
        self.xdp_mode != XdpModeArg::Off && !self.interfaces.is_empty()
    }
}

fn xdp_mode(arg: XdpModeArg) -> (XdpMode, &'static str) {
    match arg {
        XdpModeArg::Native | XdpModeArg::Off => (XdpMode::Driver, "native"),
        XdpModeArg::Skb => (XdpMode::Skb, "skb"),
    }
}

/// What is fixed at load time (globals of the programs).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The source address towards pods on other nodes (the node's IPv4).
    pub snat_ipv4: Option<std::net::Ipv4Addr>,
    /// The source address towards IPv6 pods on other nodes.
    pub snat_ipv6: Option<std::net::Ipv6Addr>,
    /// SNAT ports: `min .. min + span`.
    pub snat_port_min: u16,
    pub snat_port_span: u16,
    /// Services the L4 maps hold (the Maglev array is this many tables).
    pub max_services: u32,
    /// New flows one CPU records per second (0: no limit).
    pub new_flow_rate: u32,
    /// Seconds a closed flow (FIN or RST seen) keeps its entries.
    pub close_timeout_s: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            snat_ipv4: None,
            snat_ipv6: None,
            snat_port_min: ingress_common::l4::DEFAULT_SNAT_PORT_MIN,
            snat_port_span: ingress_common::l4::DEFAULT_SNAT_PORT_SPAN,
            max_services: ingress_common::l4::DEFAULT_MAX_SERVICES,
            new_flow_rate: ingress_common::l4::DEFAULT_NEW_FLOW_RATE,
            close_timeout_s: ingress_common::l4::CLOSE_TIMEOUT_S,
        }
    }
}

/// The loaded object with its programs not yet attached: what the packet
/// fixtures run through `BPF_PROG_TEST_RUN`.
pub struct LoadedPrograms {
    pub ebpf: Ebpf,
}

impl LoadedPrograms {
    /// Loads the embedded object and both programs into the kernel.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(&LoadOptions::default())
    }

    /// Loads with the given globals.
    pub fn load_with(opts: &LoadOptions) -> Result<Self, DatapathError> {
        let missing = privileges::missing_capabilities();
        if !missing.is_empty() {
            return Err(DatapathError::Privileges(missing.join(", ")));
        }
        let snat = opts.snat_ipv4.map_or([0u8; 4], |a| a.octets());
        let snat6 = opts.snat_ipv6.map_or([0u8; 16], |a| a.octets());
        let maglev_slots = opts
            .max_services
            .saturating_mul(ingress_common::maglev::DEFAULT_TABLE_SIZE);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(ingress_common::l4::L4_SERVICES, opts.max_services)
            .map_max_entries(ingress_common::l4::L4_MAGLEV, maglev_slots)
            .override_global(ingress_common::l4::SNAT_IPV4_GLOBAL, &snat, true)
            .override_global(ingress_common::l4::SNAT_IPV6_GLOBAL, &snat6, true)
            .override_global(
                ingress_common::l4::SNAT_PORT_MIN_GLOBAL,
                &opts.snat_port_min,
                true,
            )
            .override_global(
                ingress_common::l4::SNAT_PORT_SPAN_GLOBAL,
                &opts.snat_port_span,
                true,
            )
            .override_global(
                ingress_common::l4::NEW_FLOW_RATE_GLOBAL,
                &opts.new_flow_rate,
                true,
            )
            .override_global(
                ingress_common::l4::CLOSE_TIMEOUT_GLOBAL,
                &opts.close_timeout_s,
                true,
            )
            .load(object::EBPF_OBJECT)
            .map_err(DatapathError::Load)?;
        xdp_program(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::LoadProgram {
                name: XDP_PROGRAM,
                source,
            })?;
        tc_program(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::LoadProgram {
                name: TC_PROGRAM,
                source,
            })?;
        Ok(LoadedPrograms { ebpf })
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf)
    }

    pub fn tc(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        tc_program(&mut self.ebpf)
    }

    /// Takes a counter array out of the object (once per hook).
    pub fn take_counters(&mut self, hook: Hook) -> Result<CounterMap, DatapathError> {
        let name = match hook {
            Hook::Xdp => XDP_COUNTERS,
            Hook::Tc => TC_COUNTERS,
        };
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let array = PerCpuArray::<MapData, u64>::try_from(map)
            .map_err(|source| DatapathError::Map { name, source })?;
        Ok(CounterMap::new(hook, array))
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    ebpf.program_mut(XDP_PROGRAM)
        .ok_or(DatapathError::MissingProgram(XDP_PROGRAM))?
        .try_into()
        .map_err(|source| DatapathError::LoadProgram {
            name: XDP_PROGRAM,
            source,
        })
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    ebpf.program_mut(TC_PROGRAM)
        .ok_or(DatapathError::MissingProgram(TC_PROGRAM))?
        .try_into()
        .map_err(|source| DatapathError::LoadProgram {
            name: TC_PROGRAM,
            source,
        })
}

fn interface_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The programs attached to the uplinks. Dropping it detaches everything
/// (the links are owned by the process); [`Datapath::detach`] does the same
/// and reports each step.
pub struct Datapath {
    programs: LoadedPrograms,
    xdp_links: Vec<(String, XdpLinkId)>,
    tc_links: Vec<(String, SchedClassifierLinkId)>,
    log_task: Option<tokio::task::JoinHandle<()>>,
    /// Tells the closed-flow sweeper to stop.
    sweep_stop: Arc<AtomicBool>,
}

impl Datapath {
    /// Loads the programs and attaches them to every interface. On any
    /// error what was attached so far is detached (by drop) before returning.
    pub fn start(
        config: &DatapathConfig,
    ) -> Result<(Self, Vec<CounterMap>, l4maps::L4Maps), DatapathError> {
        for iface in &config.interfaces {
            if !interface_exists(iface) {
                return Err(DatapathError::UnknownInterface(iface.clone()));
            }
        }
        let mut programs = LoadedPrograms::load_with(&config.load)?;
        let log_task = start_log_forwarder(&mut programs.ebpf);
        let mut dp = Datapath {
            programs,
            xdp_links: Vec::new(),
            tc_links: Vec::new(),
            log_task,
            sweep_stop: Arc::new(AtomicBool::new(false)),
        };
        let (mode, mode_name) = xdp_mode(config.xdp_mode);
        for iface in &config.interfaces {
            let id = dp.programs.xdp()?.attach(iface, mode).map_err(|source| {
                DatapathError::AttachXdp {
                    interface: iface.clone(),
                    mode: mode_name,
                    source,
                }
            })?;
            dp.xdp_links.push((iface.clone(), id));
            let id = dp
                .programs
                .tc()?
                .attach(iface, TcAttachType::Egress)
                .map_err(|source| DatapathError::AttachTc {
                    interface: iface.clone(),
                    source,
                })?;
            dp.tc_links.push((iface.clone(), id));
            tracing::info!(interface = %iface, xdp_mode = mode_name, "attached XDP and TC egress");
        }
        let counters = vec![
            dp.programs.take_counters(Hook::Xdp)?,
            dp.programs.take_counters(Hook::Tc)?,
        ];
        let l4 = l4maps::L4Maps::take(&mut dp.programs)?;
        let sweeper = flow_sweep::FlowSweeper::take(&mut dp.programs, config.load.close_timeout_s)?;
        let every = Duration::from_secs(u64::from(config.load.close_timeout_s).clamp(1, 10));
        if let Err(e) = sweeper.spawn(every, dp.sweep_stop.clone()) {
            tracing::warn!(error = %e, "closed flows are left to LRU eviction: no sweeper thread");
        }
        Ok((dp, counters, l4))
    }

    /// Detaches every program from every interface.
    pub fn detach(mut self) {
        for (iface, id) in std::mem::take(&mut self.xdp_links) {
            match self.programs.xdp().and_then(|p| {
                p.detach(id).map_err(|source| DatapathError::LoadProgram {
                    name: XDP_PROGRAM,
                    source,
                })
            }) {
                Ok(()) => tracing::info!(interface = %iface, "detached XDP"),
                Err(e) => tracing::warn!(interface = %iface, error = %e, "detaching XDP"),
            }
        }
        for (iface, id) in std::mem::take(&mut self.tc_links) {
            match self.programs.tc().and_then(|p| {
                p.detach(id).map_err(|source| DatapathError::LoadProgram {
                    name: TC_PROGRAM,
                    source,
                })
            }) {
                Ok(()) => tracing::info!(interface = %iface, "detached TC egress"),
                Err(e) => tracing::warn!(interface = %iface, error = %e, "detaching TC egress"),
            }
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.sweep_stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.log_task.take() {
            task.abort();
        }
    }
}

/// Forwards the programs' aya-log records to `tracing` (through the `log`
/// bridge) from a task woken by the log ring buffer.
fn start_log_forwarder(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF logs are not forwarded");
            return None;
        }
    };
    tracing::debug!(fd = logger.as_raw_fd(), "forwarding eBPF logs");
    // SAFETY: the logger owns the ring buffer's fd for as long as the
    // AsyncFd owns the logger, and always returns that same fd.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            let (_, error) = e.into_parts();
            tracing::warn!(%error, "eBPF logs are not forwarded");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
