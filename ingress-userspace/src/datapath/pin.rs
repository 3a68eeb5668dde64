//! Pinning under bpffs: where the agent keeps the maps and links that
//! outlive it, so a restarted agent keeps established flows.
//!
//! Layout, under `--bpffs-dir` (default `/sys/fs/bpf/ingress-ebpf`):
//!
//! ```text
//! DIR/v1/maps/L4_FLOWS_V4 L4_FLOWS L4_REVNAT L4_AFFINITY XDP_COUNTERS TC_COUNTERS   state: adopted on restart
//! DIR/v1/maps/XDP_CALLS TC_CALLS                                       program arrays: adopted, slots rewritten
//! DIR/v1/maps/L4_SERVICES L4_BACKENDS L4_MAGLEV L4_PORTS L4_SOURCE_RANGES  config: rebuilt, then re-pinned
//! DIR/v1/links/xdp@IFACE tc_egress@IFACE                                links: program replaced in place
//! DIR/v1/links/tc_netlink@IFACE                                         an empty directory: a netlink TC filter (see tc_attach)
//! ```
//!
//! The version directory changes whenever a pinned map's layout changes, so
//! an agent never adopts a map whose entries it would misread; within a
//! version, a pinned state map whose type, key or value size or capacity
//! differs from what the loader expects is unpinned and replaced.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};
use ingress_common::{
    counters::COUNTER_SLOTS,
    l4::{
        AffinityKey, AffinityValue, FlowKey, FlowKeyV4, FlowValue, L4_AFFINITY, L4_BACKENDS,
        L4_FLOWS, L4_FLOWS_V4, L4_MAGLEV, L4_PORTS, L4_REVNAT, L4_SERVICES, L4_SOURCE_RANGES,
        RevValue,
    },
    maps::{CALL_SLOTS, TC_CALLS, TC_COUNTERS, XDP_CALLS, XDP_COUNTERS},
};
use thiserror::Error;

/// The pin layout's version: bump it when a pinned map's key or value
/// layout changes.
pub const LAYOUT_VERSION: &str = "v1";

/// Where the default bpffs is mounted when nothing is.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Maps rebuilt from the configuration by each agent, pinned for tools.
pub const CONFIG_MAPS: [&str; 5] = [
    L4_SERVICES,
    L4_BACKENDS,
    L4_MAGLEV,
    L4_PORTS,
    L4_SOURCE_RANGES,
];

#[derive(Debug, Error)]
pub enum PinError {
    #[error("reading /proc/mounts: {0}")]
    Mounts(#[source] io::Error),
    #[error("mounting bpffs at {BPFFS_MOUNT}: {0}")]
    Mount(#[source] io::Error),
    #[error("{0} is not on a bpf filesystem (mount one with: mount -t bpf bpf DIR)")]
    NotBpffs(PathBuf),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The paths of one pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinLayout { root: root.into() }
    }

    /// `--bpffs-dir` itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The versioned directory holding everything.
    pub fn dir(&self) -> PathBuf {
        self.root.join(LAYOUT_VERSION)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir().join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir().join("links")
    }

    /// A map's pin.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Where a config map waits, filled, before it replaces the pin tools
    /// read (a rename, so readers never see a half-filled map).
    pub fn staged_map(&self, name: &str) -> PathBuf {
        // bpffs refuses names with a dot.
        self.maps_dir().join(format!("staged@{name}"))
    }

    /// A program's link on an interface (`hook` is `xdp` or `tc_egress`).
    /// bpffs refuses dots in names, which interface names may hold
    /// (`eth0.100`): they are written `%2E`.
    pub fn link(&self, hook: &str, iface: &str) -> PathBuf {
        self.links_dir()
            .join(format!("{hook}@{}", iface.replace('.', "%2E")))
    }

    /// Creates the directories.
    pub fn create(&self) -> Result<(), PinError> {
        for d in [self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&d).map_err(|source| PinError::Io {
                what: "creating",
                path: d.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes every pin and the directory itself: links go (and detach
    /// unless a process still holds them) and maps are freed once no
    /// program uses them. `Ok(false)`: there was nothing.
    pub fn remove_all(&self) -> Result<bool, PinError> {
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(PinError::Io {
                what: "removing",
                path: self.root.clone(),
                source,
            }),
        }
    }
}

/// A link pin's file name (see [`PinLayout::link`]) split into its hook and
/// interface.
pub fn parse_link_name(name: &str) -> Option<(String, String)> {
    let (hook, iface) = name.split_once('@')?;
    (!hook.is_empty() && !iface.is_empty()).then(|| (hook.to_string(), iface.replace("%2E", ".")))
}

/// What a map looks like to the kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapShape {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl MapShape {
    fn of<K, V>(map_type: MapType, max_entries: u32) -> Self {
        MapShape {
            map_type,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries,
        }
    }

    /// How `found` differs from `self`, or `None` when it matches.
    pub fn mismatch(&self, found: &MapShape) -> Option<String> {
        let mut d = Vec::new();
        if self.map_type != found.map_type {
            d.push(format!(
                "type {:?} (expected {:?})",
                found.map_type, self.map_type
            ));
        }
        for (what, want, got) in [
            ("key size", self.key_size, found.key_size),
            ("value size", self.value_size, found.value_size),
            ("max entries", self.max_entries, found.max_entries),
        ] {
            if want != got {
                d.push(format!("{what} {got} (expected {want})"));
            }
        }
        (!d.is_empty()).then(|| d.join(", "))
    }
}

/// The maps a restarted agent adopts, with the shape the loader gives them.
///
/// The program arrays are among them: a program array's entries are
/// cleared when its last user reference (an fd held by a process, or a pin)
/// goes, so pinning keeps the ICMPv6 programs reachable after the agent
/// exits (`--on-exit keep`); each agent writes the slots again after it
/// loads (its own programs).
pub fn state_maps(max_flows: u32) -> [(&'static str, MapShape); 8] {
    [
        (
            L4_FLOWS,
            MapShape::of::<FlowKey, FlowValue>(MapType::LruHash, max_flows),
        ),
        (
            L4_FLOWS_V4,
            MapShape::of::<FlowKeyV4, FlowValue>(MapType::LruHash, max_flows),
        ),
        (
            L4_REVNAT,
            MapShape::of::<FlowKey, RevValue>(MapType::LruHash, max_flows),
        ),
        (
            L4_AFFINITY,
            MapShape::of::<AffinityKey, AffinityValue>(MapType::LruHash, max_flows),
        ),
        (
            XDP_COUNTERS,
            MapShape::of::<u32, u64>(MapType::PerCpuArray, COUNTER_SLOTS),
        ),
        (
            TC_COUNTERS,
            MapShape::of::<u32, u64>(MapType::PerCpuArray, COUNTER_SLOTS),
        ),
        (
            XDP_CALLS,
            MapShape::of::<u32, u32>(MapType::ProgramArray, CALL_SLOTS),
        ),
        (
            TC_CALLS,
            MapShape::of::<u32, u32>(MapType::ProgramArray, CALL_SLOTS),
        ),
    ]
}

fn shape_of(path: &Path) -> Result<MapShape, String> {
    let info = MapInfo::from_pin(path).map_err(|e| e.to_string())?;
    Ok(MapShape {
        map_type: info.map_type().map_err(|e| e.to_string())?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

/// Checks the pinned state maps before the loader adopts them: one that is
/// not the map the loader expects is unpinned (its entries are lost; logged
/// at warn) so the loader creates a fresh one. Returns the names kept.
pub fn check_state_maps(
    layout: &PinLayout,
    expected: &[(&'static str, MapShape)],
) -> Result<Vec<&'static str>, PinError> {
    let mut kept = Vec::new();
    for (name, want) in expected {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let problem = match shape_of(&path) {
            Ok(found) => want.mismatch(&found),
            Err(e) => Some(format!("not a readable map: {e}")),
        };
        match problem {
            None => kept.push(*name),
            Some(why) => {
                tracing::warn!(map = name, path = %path.display(), %why,
                    "pinned map does not match this agent's layout: replacing it (its entries are lost)");
                remove_file(&path)?;
            }
        }
    }
    Ok(kept)
}

/// Removes a file, absent or not.
pub fn remove_file(path: &Path) -> Result<(), PinError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PinError::Io {
            what: "removing",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Moves a staged pin over the published one (atomic on bpffs).
pub fn publish(from: &Path, to: &Path) -> Result<(), PinError> {
    std::fs::rename(from, to).map_err(|source| PinError::Io {
        what: "publishing the pin",
        path: to.to_path_buf(),
        source,
    })
}

/// The filesystem type `path` lives on, from `/proc/mounts` text: the
/// longest mount point that is `path` or one of its parents.
pub fn fs_type_of<'a>(mounts: &'a str, path: &Path) -> Option<&'a str> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            Some((point, fstype))
        })
        .filter(|(point, _)| path.starts_with(point))
        .max_by_key(|(point, _)| point.len())
        .map(|(_, t)| t)
}

/// Makes sure `dir` lies on a bpffs: mounts one at `/sys/fs/bpf` when none
/// is mounted there (as the node may not have done it).
pub fn ensure_bpffs(dir: &Path) -> Result<(), PinError> {
    let read = || std::fs::read_to_string("/proc/mounts").map_err(PinError::Mounts);
    let mounts = read()?;
    if fs_type_of(&mounts, dir) == Some("bpf") {
        return Ok(());
    }
    if fs_type_of(&mounts, Path::new(BPFFS_MOUNT)) != Some("bpf") {
        mount_bpffs()?;
        tracing::info!(mount = BPFFS_MOUNT, "mounted bpffs");
        if fs_type_of(&read()?, dir) == Some("bpf") {
            return Ok(());
        }
    }
    Err(PinError::NotBpffs(dir.to_path_buf()))
}

fn mount_bpffs() -> Result<(), PinError> {
    std::fs::create_dir_all(BPFFS_MOUNT).map_err(PinError::Mount)?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| PinError::Mount(io::Error::other(e)));
    let (src, target, fstype) = (c("bpf")?, c(BPFFS_MOUNT)?, c("bpf")?);
    // SAFETY: valid NUL-terminated strings and no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_versioned() {
        let l = PinLayout::new("/sys/fs/bpf/ingress-ebpf");
        assert_eq!(l.dir(), Path::new("/sys/fs/bpf/ingress-ebpf/v1"));
        assert_eq!(
            l.map(L4_FLOWS),
            Path::new("/sys/fs/bpf/ingress-ebpf/v1/maps/L4_FLOWS")
        );
        assert_eq!(
            l.staged_map(L4_SERVICES),
            Path::new("/sys/fs/bpf/ingress-ebpf/v1/maps/staged@L4_SERVICES")
        );
        assert_eq!(
            l.link("tc_egress", "eth0.100"),
            Path::new("/sys/fs/bpf/ingress-ebpf/v1/links/tc_egress@eth0%2E100")
        );
        assert_eq!(
            l.link("xdp", "eth0"),
            Path::new("/sys/fs/bpf/ingress-ebpf/v1/links/xdp@eth0")
        );
        assert_eq!(
            parse_link_name("tc_egress@eth0%2E100"),
            Some(("tc_egress".into(), "eth0.100".into()))
        );
        assert_eq!(parse_link_name("staged@"), None);
        assert_eq!(parse_link_name("L4_FLOWS"), None);
    }

    #[test]
    fn filesystem_of_a_path() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      bpf /sys/fs/bpf bpf rw,relatime 0 0\n\
                      /dev/sda1 / ext4 rw 0 0\n\
                      tmpfs /sys/fs/bpfx tmpfs rw 0 0\n";
        assert_eq!(
            fs_type_of(mounts, Path::new("/sys/fs/bpf/ingress-ebpf")),
            Some("bpf")
        );
        assert_eq!(fs_type_of(mounts, Path::new("/sys/fs/bpf")), Some("bpf"));
        assert_eq!(
            fs_type_of(mounts, Path::new("/sys/fs/bpfx/a")),
            Some("tmpfs")
        );
        assert_eq!(fs_type_of(mounts, Path::new("/sys/class")), Some("sysfs"));
        assert_eq!(fs_type_of(mounts, Path::new("/tmp/x")), Some("ext4"));
        assert_eq!(fs_type_of("", Path::new("/tmp/x")), None);
    }

    #[test]
    fn shapes_compare_field_by_field() {
        let maps = state_maps(1000);
        let (name, want) = maps[0];
        assert_eq!(name, L4_FLOWS);
        assert_eq!(want.mismatch(&want), None);
        let smaller = MapShape {
            max_entries: 10,
            ..want
        };
        assert_eq!(
            want.mismatch(&smaller).as_deref(),
            Some("max entries 10 (expected 1000)")
        );
        let other = MapShape {
            map_type: MapType::Hash,
            value_size: want.value_size + 4,
            ..want
        };
        let why = want.mismatch(&other).unwrap();
        assert!(why.contains("type Hash"), "{why}");
        assert!(why.contains("value size"), "{why}");
        assert!(!why.contains("key size"), "{why}");
    }
}
