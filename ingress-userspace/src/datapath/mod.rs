//! The kernel side of the agent: load the embedded eBPF object, attach XDP
//! and TC egress to the uplinks, forward the programs' logs, read counters,
//! and detach on shutdown.

pub mod batch;
pub mod counters;
pub mod flow_sweep;
pub mod l4maps;
pub mod l4sync;
pub mod object;
pub mod pin;
pub mod privileges;
pub mod tc_attach;
pub mod xdp_query;

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
    maps::{MapData, PerCpuArray, ProgramArray},
    programs::{
        Program, ProgramError, ProgramFd, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use ingress_common::maps::{
    CALL_ICMP6, CALL_L4, CALL_L4_NEW, TC_CALLS, TC_COUNTERS, TC_ICMP6_PROGRAM, TC_PROGRAM,
    XDP_CALLS, XDP_COUNTERS, XDP_ICMP6_PROGRAM, XDP_L4_NEW_PROGRAM, XDP_L4_PROGRAM, XDP_PROGRAM,
};
use pin::PinLayout;
use thiserror::Error;
use tokio::io::{Interest, unix::AsyncFd};

use crate::cli::{TcAttachArg, XdpModeArg};
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
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    #[error("pinning {what}: {source}")]
    PinObject {
        what: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{hook} link on '{interface}': {source}")]
    Link {
        hook: &'static str,
        interface: String,
        #[source]
        source: LinkError,
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
    /// TCX link or netlink filter (see [`tc_attach`]).
    pub tc_attach: TcAttachArg,
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

/// What is fixed at load time (globals of the programs, map sizes, pins).
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
    /// Backends the L4 maps hold.
    pub max_backends: u32,
    /// Entries of the connection, reverse and affinity tables.
    pub max_flows: u32,
    /// Slots of one Maglev table (prime); the programs' `MAGLEV_SIZE`.
    pub maglev_size: u32,
    /// Where state maps are pinned and adopted from; `None`: nothing pinned.
    pub pins: Option<PinLayout>,
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
            max_backends: ingress_common::l4::DEFAULT_MAX_BACKENDS,
            max_flows: ingress_common::l4::DEFAULT_MAX_FLOWS,
            maglev_size: ingress_common::maglev::DEFAULT_TABLE_SIZE,
            pins: None,
        }
    }
}

impl LoadOptions {
    /// The Maglev array's slots: one table per service.
    pub fn maglev_slots(&self) -> Result<u32, DatapathError> {
        self.max_services
            .checked_mul(self.maglev_size)
            .filter(|n| (*n as u64) * 4 <= u32::MAX as u64)
            .ok_or_else(|| {
                DatapathError::Options(format!(
                    "{} services x {} Maglev slots is too large a Maglev array (at most {} slots in all)",
                    self.max_services,
                    self.maglev_size,
                    u32::MAX / 4
                ))
            })
    }
}

/// The loaded object with its programs not yet attached: what the packet
/// fixtures run through `BPF_PROG_TEST_RUN`.
pub struct LoadedPrograms {
    pub ebpf: Ebpf,
    /// What it was loaded with.
    pub options: LoadOptions,
    /// XDP's general and new-flow L4 programs, for their program-array
    /// slots.
    general: [(u32, ProgramFd); 2],
}

impl LoadedPrograms {
    /// Loads the embedded object and both programs into the kernel.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(&LoadOptions::default())
    }

    /// Loads with the given globals.
    pub fn load_with(opts: &LoadOptions) -> Result<Self, DatapathError> {
        // Whether the program array is a previous agent's (pinned): then
        // its L4 slots keep the previous agent's programs until
        // `Datapath::attach` (see `arm_general_path`).
        let adopting = opts
            .pins
            .as_ref()
            .is_some_and(|l| l.map(XDP_CALLS).exists());
        let mut ebpf = open_object(opts)?;
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
        let general = load_tail_calls(&mut ebpf)?;
        let mut loaded = LoadedPrograms {
            ebpf,
            options: opts.clone(),
            general,
        };
        if !adopting {
            loaded.arm_general_path()?;
        }
        Ok(loaded)
    }

    /// Writes this load's general and new-flow L4 programs into their
    /// program-array slots. In an adopted array those slots serve the
    /// previous agent's main program, still attached, until the links
    /// swap: so they are written only once this load's config maps are
    /// filled (by [`Datapath::attach`]), never while those are empty, which
    /// would refuse new flows for the time the first snapshot takes.
    pub fn arm_general_path(&mut self) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(XDP_CALLS)
            .ok_or(DatapathError::MissingMap(XDP_CALLS))?;
        let map_err = |source| DatapathError::Map {
            name: XDP_CALLS,
            source,
        };
        let mut calls = ProgramArray::try_from(map).map_err(map_err)?;
        // The new-flow program first: the general program calls it.
        for (slot, fd) in self.general.iter().rev() {
            calls.set(*slot, fd, 0).map_err(map_err)?;
        }
        Ok(())
    }
}

/// The embedded object with its maps created and globals set, no program
/// loaded yet: what [`LoadedPrograms::load_with`] loads the programs of, and
/// what the kernel check loads them from one by one.
pub fn open_object(opts: &LoadOptions) -> Result<Ebpf, DatapathError> {
    let missing = privileges::missing_capabilities();
    if !missing.is_empty() {
        return Err(DatapathError::Privileges(missing.join(", ")));
    }
    let snat = opts.snat_ipv4.map_or([0u8; 4], |a| a.octets());
    let snat6 = opts.snat_ipv6.map_or([0u8; 16], |a| a.octets());
    let maglev_slots = opts.maglev_slots()?;
    let mut loader = EbpfLoader::new();
    let state_maps = pin::state_maps(opts.max_flows);
    let pin_paths: Vec<(&'static str, std::path::PathBuf)> = match &opts.pins {
        Some(layout) => {
            layout.create()?;
            let adopted = pin::check_state_maps(layout, &state_maps)?;
            if !adopted.is_empty() {
                tracing::info!(maps = ?adopted, dir = %layout.dir().display(), "adopting pinned state maps");
            }
            state_maps
                .iter()
                .map(|(name, _)| (*name, layout.map(name)))
                .collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    use ingress_common::l4::{L4_AFFINITY, L4_BACKENDS, L4_FLOWS, L4_FLOWS_V4, L4_REVNAT};
    loader
        .map_max_entries(ingress_common::l4::L4_SERVICES, opts.max_services)
        .map_max_entries(L4_BACKENDS, opts.max_backends)
        .map_max_entries(L4_FLOWS, opts.max_flows)
        .map_max_entries(L4_FLOWS_V4, opts.max_flows)
        .map_max_entries(L4_REVNAT, opts.max_flows)
        .map_max_entries(L4_AFFINITY, opts.max_flows)
        .map_max_entries(ingress_common::l4::L4_MAGLEV, maglev_slots)
        .override_global(
            ingress_common::l4::MAGLEV_SIZE_GLOBAL,
            &opts.maglev_size,
            true,
        )
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
        .map_err(DatapathError::Load)
}

impl LoadedPrograms {
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

/// Loads the tail-called programs (ICMPv6, and XDP's general and new-flow
/// L4 programs)
/// and writes the ICMPv6 ones into the program arrays the main programs
/// tail-call through. An adopted (pinned) array gets this load's ICMPv6
/// programs: from here on the previous agent's main programs, still
/// attached until the links are swapped, call them too, which is right:
/// they read only the state maps the two loads share. The general program
/// programs read this load's config maps as well, so their slots are
/// written apart ([`LoadedPrograms::arm_general_path`]); their slots and
/// fds are returned.
fn load_tail_calls(ebpf: &mut Ebpf) -> Result<[(u32, ProgramFd); 2], DatapathError> {
    let xdp_fd = load_tail_called(ebpf, XDP_ICMP6_PROGRAM, load_xdp)?;
    let tc_fd = load_tail_called(ebpf, TC_ICMP6_PROGRAM, load_tc)?;
    let general = [
        (CALL_L4, load_tail_called(ebpf, XDP_L4_PROGRAM, load_xdp)?),
        (
            CALL_L4_NEW,
            load_tail_called(ebpf, XDP_L4_NEW_PROGRAM, load_xdp)?,
        ),
    ];
    for (name, fd) in [(XDP_CALLS, &xdp_fd), (TC_CALLS, &tc_fd)] {
        let map = ebpf.map_mut(name).ok_or(DatapathError::MissingMap(name))?;
        let mut calls =
            ProgramArray::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        calls
            .set(CALL_ICMP6, fd, 0)
            .map_err(|source| DatapathError::Map { name, source })?;
    }
    Ok(general)
}

/// Loads the tail-called program `name` with `load` (its type's) and
/// returns a duplicate of its fd, for a program-array slot.
fn load_tail_called(
    ebpf: &mut Ebpf,
    name: &'static str,
    load: fn(&mut Program) -> Result<&ProgramFd, ProgramError>,
) -> Result<ProgramFd, DatapathError> {
    let err = |source| DatapathError::LoadProgram { name, source };
    let program = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?;
    load(program)
        .map_err(err)?
        .try_clone()
        .map_err(|e| err(ProgramError::IOError(e)))
}

fn load_xdp(program: &mut Program) -> Result<&ProgramFd, ProgramError> {
    let xdp: &mut Xdp = program.try_into()?;
    xdp.load()?;
    xdp.fd()
}

fn load_tc(program: &mut Program) -> Result<&ProgramFd, ProgramError> {
    let tc: &mut SchedClassifier = program.try_into()?;
    tc.load()?;
    tc.fd()
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
    // if_nametoindex asks the process's network namespace (sysfs may show
    // another one's interfaces).
    std::ffi::CString::new(name)
        // SAFETY: a valid NUL-terminated string.
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
        .unwrap_or(false)
}

/// A program's link on an interface, held by the agent; pinned unless the
/// data path runs without a pin directory.
struct HeldLink {
    hook: &'static str,
    interface: String,
    link: Held,
    /// The link's pin, or a netlink filter's marker.
    pin: Option<std::path::PathBuf>,
    /// Made by this agent (not adopted from a pin).
    created: bool,
}

/// A bpf link, or a netlink TC filter (no link: see [`tc_attach`]).
enum Held {
    Link(FdLink),
    Filter(tc_attach::Filter),
}

impl Held {
    /// Detaches unless pinned (a link) or persistent (a filter).
    fn release(self) {
        match self {
            // Closing the last reference to the link detaches it.
            Held::Link(l) => drop(l),
            Held::Filter(f) => drop(f),
        }
    }

    /// Detaches, pinned or not (the caller removes the pin).
    fn detach(self) {
        match self {
            Held::Link(l) => drop(l),
            Held::Filter(f) => f.detach(),
        }
    }
}

/// The hook names links are pinned under.
const XDP_HOOK: &str = "xdp";
const TC_HOOK: &str = "tc_egress";

/// The programs, loaded and (after [`Datapath::attach`]) attached to the
/// uplinks. Links that are not pinned detach when it drops; pinned ones
/// stay attached until [`Datapath::detach`] or `ingress bpf detach`.
pub struct Datapath {
    programs: LoadedPrograms,
    links: Vec<HeldLink>,
    log_task: Option<tokio::task::JoinHandle<()>>,
    /// Tells the closed-flow sweeper to stop.
    sweep_stop: Arc<AtomicBool>,
}

impl Datapath {
    /// Loads the programs (adopting pinned state maps) without attaching
    /// them: the caller fills the config maps first, then calls
    /// [`Datapath::attach`].
    pub fn load(
        config: &DatapathConfig,
    ) -> Result<(Self, Vec<CounterMap>, l4maps::L4Maps), DatapathError> {
        for iface in &config.interfaces {
            if !interface_exists(iface) {
                return Err(DatapathError::UnknownInterface(iface.clone()));
            }
        }
        let missing = privileges::missing_capabilities();
        if !missing.is_empty() {
            return Err(DatapathError::Privileges(missing.join(", ")));
        }
        if let Some(layout) = &config.load.pins {
            pin::ensure_bpffs(layout.root())?;
        }
        let mut programs = LoadedPrograms::load_with(&config.load)?;
        let log_task = start_log_forwarder(&mut programs.ebpf);
        let mut dp = Datapath {
            programs,
            links: Vec::new(),
            log_task,
            sweep_stop: Arc::new(AtomicBool::new(false)),
        };
        let counters = vec![
            dp.programs.take_counters(Hook::Xdp)?,
            dp.programs.take_counters(Hook::Tc)?,
        ];
        let l4 = l4maps::L4Maps::take(&mut dp.programs)?;
        let mut sweeper =
            flow_sweep::FlowSweeper::take(&mut dp.programs, config.load.close_timeout_s)?;
        // Before the programs attach: IPv4 flows an older agent recorded in
        // the IPv6 table are found where the new programs look.
        let moved = sweeper.move_ipv4_flows();
        if moved > 0 {
            tracing::info!(moved, "IPv4 flows moved to the IPv4 connection table");
        }
        let every = Duration::from_secs(u64::from(config.load.close_timeout_s).clamp(1, 10));
        if let Err(e) = sweeper.spawn(every, dp.sweep_stop.clone()) {
            tracing::warn!(error = %e, "closed flows are left to LRU eviction: no sweeper thread");
        }
        Ok((dp, counters, l4))
    }

    /// Attaches XDP and TC egress to every interface. Where a pinned link
    /// exists (an agent ran before), the program behind it is replaced
    /// atomically, so no packet meets an interface without a program;
    /// otherwise a new link is made and pinned. TC egress without TCX is a
    /// netlink filter at the agent's slot, replaced in place the same way
    /// ([`tc_attach`]). On error, links and filters made so far go again;
    /// adopted ones keep serving.
    pub fn attach(&mut self, config: &DatapathConfig) -> Result<(), DatapathError> {
        // The config maps are filled by now: the general program may serve
        // (the previous agent's main program calls it too until the swap).
        self.programs.arm_general_path()?;
        let result = self.attach_all(config);
        if result.is_ok()
            && let Some(layout) = &config.load.pins
        {
            self.release_other_links(layout);
        }
        if result.is_err() {
            // Links and filters this agent made go again; adopted ones keep
            // serving.
            for l in std::mem::take(&mut self.links) {
                match (l.created, l.link, &l.pin) {
                    (true, Held::Filter(f), pin) => {
                        f.detach();
                        if let Some(p) = pin {
                            let _ = tc_attach::unmark(p);
                        }
                    }
                    (true, link, Some(p)) => {
                        let _ = pin::remove_file(p);
                        link.release();
                    }
                    (_, link, _) => link.release(),
                }
            }
        }
        result
    }

    fn attach_all(&mut self, config: &DatapathConfig) -> Result<(), DatapathError> {
        let (mode, mode_name) = xdp_mode(config.xdp_mode);
        let tc_mode = tc_attach::resolve(config.tc_attach, tc_attach::running_kernel());
        let pins = config.load.pins.clone();
        for iface in &config.interfaces {
            let pin_path = pins.as_ref().map(|l| l.link(XDP_HOOK, iface));
            let (link, how) = self.attach_xdp(iface, mode, mode_name, pin_path.as_deref())?;
            self.hold(XDP_HOOK, iface, link, pin_path)?;
            let tc_how = match tc_mode {
                tc_attach::TcMode::Tcx => {
                    let pin_path = pins.as_ref().map(|l| l.link(TC_HOOK, iface));
                    let (link, tc_how) = self.attach_tc(iface, pin_path.as_deref())?;
                    self.hold(TC_HOOK, iface, link, pin_path)?;
                    tc_how
                }
                tc_attach::TcMode::Netlink => {
                    let marker = pins.as_ref().map(|l| tc_attach::marker(l, iface));
                    self.attach_tc_filter(iface, marker)?
                }
            };
            tracing::info!(interface = %iface, xdp_mode = mode_name, xdp = how,
                tc_attach = tc_mode.name(), tc_egress = tc_how, "XDP and TC egress attached");
        }
        Ok(())
    }

    /// Removes pinned links this agent does not hold (interfaces no longer
    /// given), which detaches the old programs there.
    fn release_other_links(&self, layout: &PinLayout) {
        let Ok(entries) = std::fs::read_dir(layout.links_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if self.links.iter().any(|l| l.pin.as_deref() == Some(&path)) {
                continue;
            }
            if let Some(iface) = tc_attach::marked_interface(&path) {
                // A netlink filter of another interface, or of this one
                // when TC egress now attaches through TCX.
                let why = if self.links.iter().any(|l| l.interface == iface) {
                    "removed the TC filter of an interface whose TC egress is now a TCX link"
                } else {
                    "removed the TC filter of an interface no longer given"
                };
                match tc_attach::release(&path) {
                    Ok(_) => tracing::info!(marker = %path.display(), "{why}"),
                    Err(error) => tracing::warn!(%error, "removing a TC filter"),
                }
                continue;
            }
            match pin::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(pin = %path.display(), "detached from an interface no longer given")
                }
                Err(e) => tracing::warn!(error = %e, "removing a stale link pin"),
            }
        }
    }

    /// Keeps a link: pins a new one, keeps the pin of an adopted one.
    fn hold(
        &mut self,
        hook: &'static str,
        iface: &str,
        link: Attached,
        pin: Option<std::path::PathBuf>,
    ) -> Result<(), DatapathError> {
        let created = matches!(link, Attached::New(_));
        let link = match (link, &pin) {
            (Attached::New(link), Some(path)) => {
                // A stale pin (a link whose interface went away) is replaced.
                pin::remove_file(path)?;
                FdLink::from(link.pin(path).map_err(|source| DatapathError::PinObject {
                    what: format!("the {hook} link of '{iface}' at {}", path.display()),
                    source,
                })?)
            }
            (Attached::New(link) | Attached::Adopted(link), _) => link,
        };
        self.links.push(HeldLink {
            hook,
            interface: iface.to_string(),
            link: Held::Link(link),
            pin,
            created,
        });
        Ok(())
    }

    fn attach_xdp(
        &mut self,
        iface: &str,
        mode: XdpMode,
        mode_name: &'static str,
        pin_path: Option<&std::path::Path>,
    ) -> Result<(Attached, &'static str), DatapathError> {
        let link_err = |source| DatapathError::Link {
            hook: XDP_HOOK,
            interface: iface.to_string(),
            source,
        };
        let prog_err = |source| DatapathError::AttachXdp {
            interface: iface.to_string(),
            mode: mode_name,
            source,
        };
        let xdp = self.programs.xdp()?;
        let mut adopted = pin_path.and_then(adopt_pinned);
        if adopted.is_some()
            && let Some(found) = mode_mismatch(iface, mode)
        {
            // Native and generic XDP cannot be attached to one interface
            // at once, and a link cannot change its mode: the old link
            // goes, then a new one is made. Frames arriving in between
            // meet no program; the flows stay in the pinned maps.
            tracing::warn!(interface = %iface, from = found.name(), to = mode_name,
                "the pinned XDP link is in another mode: replacing it with a new link");
            if let Some(p) = pin_path {
                pin::remove_file(p)?;
            }
            // Dropping the last reference to the old link detaches it.
            drop(adopted.take());
        }
        if let Some(old) = adopted {
            let replaced = XdpLink::try_from(old)
                .map_err(|e| e.to_string())
                .and_then(|l| xdp.attach_to_link(l).map_err(|e| e.to_string()));
            match replaced {
                Ok(id) => {
                    let link = xdp.take_link(id).map_err(prog_err)?;
                    return Ok((
                        Attached::Adopted(FdLink::try_from(link).map_err(link_err)?),
                        "replaced in the pinned link",
                    ));
                }
                Err(error) => {
                    tracing::warn!(interface = %iface, %error, "the pinned XDP link cannot take the new program: attaching anew")
                }
            }
        }
        let id = xdp.attach(iface, mode).map_err(prog_err)?;
        let link = xdp.take_link(id).map_err(prog_err)?;
        Ok((
            Attached::New(FdLink::try_from(link).map_err(link_err)?),
            "new link",
        ))
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        pin_path: Option<&std::path::Path>,
    ) -> Result<(Attached, &'static str), DatapathError> {
        let link_err = |source| DatapathError::Link {
            hook: TC_HOOK,
            interface: iface.to_string(),
            source,
        };
        let prog_err = |source| DatapathError::AttachTc {
            interface: iface.to_string(),
            source,
        };
        let tc = self.programs.tc()?;
        if let Some(old) = pin_path.and_then(adopt_pinned) {
            let replaced = SchedClassifierLink::try_from(old)
                .map_err(|e| e.to_string())
                .and_then(|l| tc.attach_to_link(l).map_err(|e| e.to_string()));
            match replaced {
                Ok(id) => {
                    let link = tc.take_link(id).map_err(prog_err)?;
                    return Ok((
                        Attached::Adopted(FdLink::try_from(link).map_err(link_err)?),
                        "replaced in the pinned link",
                    ));
                }
                Err(error) => {
                    tracing::warn!(interface = %iface, %error, "the pinned TC link cannot take the new program: attaching anew")
                }
            }
        }
        let id = tc.attach(iface, TcAttachType::Egress).map_err(prog_err)?;
        let link = tc.take_link(id).map_err(prog_err)?;
        Ok((
            Attached::New(FdLink::try_from(link).map_err(link_err)?),
            "new link",
        ))
    }

    /// Attaches TC egress as a netlink filter at the agent's slot (see
    /// [`tc_attach`]): replaces the program of the filter a previous agent
    /// left, or makes one; marks it under the pin directory, if any.
    fn attach_tc_filter(
        &mut self,
        iface: &str,
        marker: Option<std::path::PathBuf>,
    ) -> Result<&'static str, DatapathError> {
        let tc = self.programs.tc()?;
        let (filter, replaced) =
            tc_attach::attach(tc, iface, marker.is_some()).map_err(|source| {
                DatapathError::AttachTc {
                    interface: iface.to_string(),
                    source,
                }
            })?;
        // Held first, so that a failed attach removes a filter made here.
        self.links.push(HeldLink {
            hook: TC_HOOK,
            interface: iface.to_string(),
            link: Held::Filter(filter),
            pin: marker.clone(),
            created: !replaced,
        });
        if let Some(m) = &marker {
            tc_attach::mark(m)?;
        }
        Ok(if replaced {
            "replaced in the agent's filter"
        } else {
            "new filter"
        })
    }

    /// Leaves the programs attached and the maps pinned (a restarted agent
    /// adopts them). Links that are not pinned detach as they drop.
    pub fn keep(mut self) {
        for l in std::mem::take(&mut self.links) {
            match (&l.pin, &l.link) {
                (Some(p), Held::Link(_)) => {
                    tracing::info!(interface = %l.interface, hook = l.hook, pin = %p.display(), "left attached (pinned)")
                }
                (Some(_), Held::Filter(_)) => {
                    tracing::info!(interface = %l.interface, hook = l.hook,
                        priority = tc_attach::FILTER_PRIORITY, handle = %format!("{:#x}", u32::from(tc_attach::FILTER_HANDLE)),
                        "left attached (netlink filter)")
                }
                (None, _) => tracing::info!(interface = %l.interface, hook = l.hook, "detached"),
            }
            l.link.release();
        }
    }

    /// Detaches every program from every interface and removes the pins.
    pub fn detach(mut self) {
        for l in std::mem::take(&mut self.links) {
            let unpinned = match (&l.pin, &l.link) {
                (Some(p), Held::Link(_)) => pin::remove_file(p),
                (Some(m), Held::Filter(_)) => tc_attach::unmark(m),
                (None, _) => Ok(()),
            };
            if let Err(e) = unpinned {
                tracing::warn!(interface = %l.interface, hook = l.hook, error = %e, "unpinning");
            }
            l.link.detach();
            tracing::info!(interface = %l.interface, hook = l.hook, "detached");
        }
        if let Some(layout) = &self.programs.options.pins {
            match layout.remove_all() {
                Ok(_) => tracing::info!(dir = %layout.root().display(), "removed the pins"),
                Err(e) => tracing::warn!(error = %e, "removing the pins"),
            }
        }
    }
}

/// The mode XDP is attached in on `iface` when it is not `mode` (the
/// kernel asked over rtnetlink); `None` when it matches, nothing is
/// attached or the kernel cannot say (then the pinned link is tried as is).
fn mode_mismatch(iface: &str, mode: XdpMode) -> Option<xdp_query::XdpAttached> {
    use xdp_query::XdpAttached;
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return None;
    }
    let want = if mode == XdpMode::Skb {
        XdpAttached::Generic
    } else {
        XdpAttached::Driver
    };
    match xdp_query::xdp_attached(ifindex) {
        Ok(found @ (XdpAttached::Driver | XdpAttached::Generic)) if found != want => Some(found),
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(interface = %iface, %error, "cannot tell the attached XDP mode: keeping the pinned link's");
            None
        }
    }
}

/// A link fresh from attaching, or one a previous agent pinned whose
/// program was just replaced.
enum Attached {
    New(FdLink),
    Adopted(FdLink),
}

/// Opens a pinned link, if there is one.
fn adopt_pinned(path: &std::path::Path) -> Option<FdLink> {
    if !path.exists() {
        return None;
    }
    match PinnedLink::from_pin(path) {
        Ok(l) => Some(FdLink::from(l)),
        Err(error) => {
            tracing::warn!(pin = %path.display(), %error, "unreadable link pin: attaching anew");
            None
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
