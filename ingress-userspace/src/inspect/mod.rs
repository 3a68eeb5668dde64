//! `ingress bpf services|backends|flows|stats|detach`: reads the maps the
//! agent pinned (opened read-only) and prints them, or removes the pins.

pub mod format;

use std::{
    ffi::CString,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use anyhow::{Context, bail};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use ingress_common::{
    counters::Counter,
    l4::{
        BackendValue, FlowKey, FlowKeyV4, FlowValue, L4_BACKENDS, L4_FLOWS, L4_FLOWS_V4,
        L4_SERVICES, ServiceKey, ServiceValue,
    },
    maps::{TC_COUNTERS, XDP_COUNTERS},
};

use crate::{
    cli::{BpfCommand, BpfOpts, OutputFormat},
    datapath::{
        counters::{CounterMap, Hook, metric_name},
        pin::PinLayout,
    },
};
use format::{Row, StatRow};

/// Runs one `ingress bpf` command, printing to stdout.
pub fn run(cmd: &BpfCommand) -> anyhow::Result<()> {
    let out = match cmd {
        BpfCommand::Services(o) => render(o, services(&layout(o)?)?),
        BpfCommand::Backends(o) => render(o, backends(&layout(o)?)?),
        BpfCommand::Flows(o) => render(o, flows(&layout(o)?)?),
        BpfCommand::Stats(o) => render(o, stats(&layout(o)?)?),
        BpfCommand::Detach(d) => {
            let layout = PinLayout::new(d.bpffs_dir.clone());
            if layout.remove_all()? {
                format!(
                    "removed {} (links detached, maps unpinned)\n",
                    layout.root().display()
                )
            } else {
                format!("nothing pinned under {}\n", layout.root().display())
            }
        }
    };
    print!("{out}");
    Ok(())
}

fn render<R: Row>(o: &BpfOpts, rows: Vec<R>) -> String {
    match o.output {
        OutputFormat::Table => format::table(&rows),
        OutputFormat::Json => format::json(&rows),
    }
}

/// The layout, if the agent pinned anything there.
fn layout(o: &BpfOpts) -> anyhow::Result<PinLayout> {
    let layout = PinLayout::new(o.dir.bpffs_dir.clone());
    if !layout.maps_dir().is_dir() {
        bail!(
            "nothing pinned under {} (is an agent running with --bpffs-dir {}?)",
            layout.dir().display(),
            layout.root().display()
        );
    }
    Ok(layout)
}

/// `BPF_OBJ_GET` with `BPF_F_RDONLY`: a read-only fd on a pinned map (aya
/// opens pins read-write).
fn open_read_only(path: &Path) -> anyhow::Result<MapData> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_F_RDONLY: u32 = 1 << 3;
    let c = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("pin path {}", path.display()))?;
    let attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: BPF_F_RDONLY,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: BPF_OBJ_GET reads `attr` (its size is passed) and the
    // NUL-terminated path it points to, both alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            size_of::<ObjGet>() as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            bail!("nothing pinned at {}", path.display());
        }
        return Err(e).with_context(|| format!("opening the pinned map {}", path.display()));
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    MapData::from_fd(fd).with_context(|| format!("reading the map at {}", path.display()))
}

fn open(layout: &PinLayout, name: &str) -> anyhow::Result<Map> {
    let data = open_read_only(&layout.map(name))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

fn services(layout: &PinLayout) -> anyhow::Result<Vec<format::ServiceRow>> {
    let map: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(open(layout, L4_SERVICES)?).context(L4_SERVICES)?;
    let mut rows = Vec::new();
    for e in map.iter() {
        let (k, v) = e.context("reading L4_SERVICES")?;
        rows.push((k, format::service_row(&k, &v)));
    }
    rows.sort_by_key(|(k, _)| *k);
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

fn backends(layout: &PinLayout) -> anyhow::Result<Vec<format::BackendRow>> {
    let map: HashMap<_, u32, BackendValue> =
        HashMap::try_from(open(layout, L4_BACKENDS)?).context(L4_BACKENDS)?;
    let mut rows = Vec::new();
    for e in map.iter() {
        let (id, v) = e.context("reading L4_BACKENDS")?;
        rows.push(format::backend_row(id, &v));
    }
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

fn flows(layout: &PinLayout) -> anyhow::Result<Vec<format::FlowRow>> {
    let mut rows = Vec::new();
    // IPv4 flows have a table of their own (an agent before it pinned
    // none: then there is only the IPv6 one).
    if layout.map(L4_FLOWS_V4).exists() {
        for (k, v) in lru_entries::<FlowKeyV4>(layout, L4_FLOWS_V4)? {
            rows.push(format::flow_row(&k.widen(), &v));
        }
    }
    for (k, v) in lru_entries::<FlowKey>(layout, L4_FLOWS)? {
        rows.push(format::flow_row(&k, &v));
    }
    rows.sort_by(|a, b| {
        (&a.frontend, &a.client, &a.proto).cmp(&(&b.frontend, &b.client, &b.proto))
    });
    Ok(rows)
}

/// The entries of the pinned connection table `name`, keyed by `K`. An
/// LRU entry can go between listing a key and reading it: such a key is
/// skipped.
fn lru_entries<K: aya::Pod>(layout: &PinLayout, name: &str) -> anyhow::Result<Vec<(K, FlowValue)>> {
    let map: HashMap<_, K, FlowValue> =
        HashMap::try_from(open(layout, name)?).with_context(|| name.to_string())?;
    let mut entries = Vec::new();
    for e in map.iter() {
        match e {
            Ok(kv) => entries.push(kv),
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {name}")),
        }
    }
    Ok(entries)
}

fn stats(layout: &PinLayout) -> anyhow::Result<Vec<StatRow>> {
    let mut rows = Vec::new();
    for (hook, name) in [(Hook::Xdp, XDP_COUNTERS), (Hook::Tc, TC_COUNTERS)] {
        let array = PerCpuArray::<MapData, u64>::try_from(open(layout, name)?).context(name)?;
        let counters = CounterMap::new(hook, array);
        for (c, value) in counters.read_all()? {
            rows.push(StatRow {
                hook: hook.name(),
                counter: metric_name(c),
                value,
            });
        }
    }
    debug_assert!(rows.len() == 2 * Counter::ALL.len());
    Ok(rows)
}
