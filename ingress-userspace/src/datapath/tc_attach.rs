//! How the TC egress program attaches: a TCX bpf link (Linux 6.6+, pinned
//! under the pin directory like the XDP link) or, below 6.6 or with
//! `--tc-attach netlink`, a cls_bpf filter in direct-action mode on the
//! `clsact` qdisc's egress hook.
//!
//! A netlink filter is no bpf link: it cannot be pinned, and aya removes it
//! when its link value drops. So the agent owns one fixed slot on the egress
//! hook, priority [`FILTER_PRIORITY`] and handle [`FILTER_HANDLE`]
//! (`tc filter show dev IFACE egress` shows `pref 7765 ... handle 0x1e55`):
//! a restarted agent finds its own filter with no state, and re-sends the
//! filter for that slot without `NLM_F_EXCL`, which cls_bpf takes as a
//! replacement of the program (atomic: a packet meets the old program or
//! the new one, never none and never both). Which interfaces carry a filter
//! made under a pin directory is marked there by an empty directory,
//! `DIR/v1/links/tc_netlink@IFACE` (bpffs holds no regular files), so that
//! an agent drops the filters of interfaces no longer given and
//! `ingress bpf detach` finds them.
//!
//! The program's verdict, `TC_ACT_PIPE`, means "go on" under both: cls_bpf
//! in direct-action mode hands any verdict but OK, SHOT, STOLEN, TRAP and
//! REDIRECT on as `TC_ACT_UNSPEC` (the next filter), TCX any but PASS, DROP
//! and REDIRECT as `TCX_NEXT`.

use std::{io, path::Path, path::PathBuf};

use aya::{
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
    util::KernelVersion,
};
use ingress_common::maps::TC_PROGRAM;

use super::pin::{self, PinError, PinLayout};
use crate::cli::TcAttachArg;

/// The agent's filter priority on the egress hook (`pref 7765`): below the
/// 49152 and down that `tc` and aya give filters added without one, so never
/// taken by those, and ahead of them in the chain.
pub const FILTER_PRIORITY: u16 = 0x1e55;
/// The agent's filter handle at that priority (`handle 0x1e55`).
pub const FILTER_HANDLE: TcHandle = TcHandle::new(0, 0x1e55);
/// The first kernel with TCX.
pub const TCX_SINCE: KernelVersion = KernelVersion::new(6, 6, 0);
/// The hook name of the marker directories (`tc_netlink@IFACE`).
pub const MARKER_HOOK: &str = "tc_netlink";

/// How TC egress attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    Tcx,
    Netlink,
}

impl TcMode {
    pub fn name(self) -> &'static str {
        match self {
            TcMode::Tcx => "tcx",
            TcMode::Netlink => "netlink",
        }
    }
}

/// The mode `--tc-attach` asks for on a kernel of version `kernel` (`None`:
/// unknown, then netlink, which every supported kernel has).
pub fn resolve(arg: TcAttachArg, kernel: Option<KernelVersion>) -> TcMode {
    match arg {
        TcAttachArg::Tcx => TcMode::Tcx,
        TcAttachArg::Netlink => TcMode::Netlink,
        TcAttachArg::Auto if kernel.is_some_and(|k| k >= TCX_SINCE) => TcMode::Tcx,
        TcAttachArg::Auto => TcMode::Netlink,
    }
}

/// The running kernel's version, if it can be read.
pub fn running_kernel() -> Option<KernelVersion> {
    KernelVersion::current().ok()
}

/// The agent's filter on one interface's egress hook. A persistent one
/// (made under a pin directory) stays attached when this value drops, as a
/// pinned link does; else it goes. [`Filter::detach`] removes it either way.
pub struct Filter {
    link: Option<SchedClassifierLink>,
    persistent: bool,
}

impl Filter {
    /// Removes the filter from the interface.
    pub fn detach(mut self) {
        // Dropping aya's link value deletes the filter.
        drop(self.link.take());
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Some(link) = self.link.take()
            && self.persistent
        {
            // aya's link deletes the filter on drop; a persistent one stays.
            std::mem::forget(link);
        }
    }
}

/// Adds the `clsact` qdisc to `iface` unless it has one.
pub fn ensure_clsact(iface: &str) -> Result<(), TcError> {
    match tc::qdisc_add_clsact(iface) {
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Attaches `program` to `iface`'s egress hook at the agent's slot: the
/// program of a filter already there (an agent ran before) is replaced in
/// place, else a new filter is made. Whether it replaced one.
pub fn attach(
    program: &mut SchedClassifier,
    iface: &str,
    persistent: bool,
) -> Result<(Filter, bool), ProgramError> {
    ensure_clsact(iface)?;
    let slot = SchedClassifierLink::attached(
        iface,
        TcAttachType::Egress,
        FILTER_PRIORITY,
        FILTER_HANDLE,
        None,
    )
    .map_err(ProgramError::IOError)?;
    // Without NLM_F_EXCL and NLM_F_CREATE: replaces the filter in the slot,
    // fails if there is none.
    let (id, replaced) = match program.attach_to_link(slot) {
        Ok(id) => (id, true),
        Err(replace_error) => {
            let created = program.attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: FILTER_PRIORITY,
                    handle: FILTER_HANDLE,
                    classid: None,
                }),
            );
            match created {
                Ok(id) => (id, false),
                Err(e) => {
                    tracing::warn!(interface = %iface, error = %replace_error, "replacing the program of the agent's filter");
                    return Err(e);
                }
            }
        }
    };
    let link = program.take_link(id)?;
    Ok((
        Filter {
            link: Some(link),
            persistent,
        },
        replaced,
    ))
}

/// Removes the agent's filters (by the program's name) from `iface`'s
/// egress hook; whether there was one.
pub fn remove(iface: &str) -> Result<bool, TcError> {
    match tc::qdisc_detach_program(iface, TcAttachType::Egress, TC_PROGRAM) {
        Ok(()) => Ok(true),
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The marker of a filter on `iface` made under `layout`.
pub fn marker(layout: &PinLayout, iface: &str) -> PathBuf {
    layout.link(MARKER_HOOK, iface)
}

/// Marks a filter (an empty directory; there already is fine).
pub fn mark(path: &Path) -> Result<(), PinError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(PinError::Io {
            what: "marking the TC filter at",
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Removes a marker (gone already is fine).
pub fn unmark(path: &Path) -> Result<(), PinError> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(PinError::Io {
            what: "removing the TC filter marker",
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The interface a marker's path names, if it is one.
pub fn marked_interface(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    match pin::parse_link_name(name)? {
        (hook, iface) if hook == MARKER_HOOK => Some(iface),
        _ => None,
    }
}

/// Removes the filter a marker names, then the marker; whether a filter
/// was there.
pub fn release(path: &Path) -> Result<bool, String> {
    let iface = marked_interface(path).ok_or_else(|| format!("{} is no marker", path.display()))?;
    // An interface that went away took its filter along.
    let removed = if interface_exists(&iface) {
        remove(&iface).map_err(|e| format!("removing the TC filter of '{iface}': {e}"))?
    } else {
        false
    };
    unmark(path).map_err(|e| e.to_string())?;
    Ok(removed)
}

/// `ingress bpf detach`: removes the filters marked under `layout` (the
/// markers go with the pin directory); the interfaces they were on.
pub fn detach_marked(layout: &PinLayout) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(layout.links_dir()) else {
        return Vec::new();
    };
    let mut detached = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        let Some(iface) = marked_interface(&path) else {
            continue;
        };
        match release(&path) {
            Ok(true) => detached.push(iface),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "detaching a TC filter"),
        }
    }
    detached
}

fn interface_exists(name: &str) -> bool {
    std::ffi::CString::new(name)
        // SAFETY: a valid NUL-terminated string.
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_tcx_from_6_6_and_netlink_below() {
        let k = KernelVersion::new;
        assert_eq!(resolve(TcAttachArg::Auto, Some(k(6, 6, 0))), TcMode::Tcx);
        assert_eq!(resolve(TcAttachArg::Auto, Some(k(6, 18, 4))), TcMode::Tcx);
        assert_eq!(
            resolve(TcAttachArg::Auto, Some(k(6, 5, 13))),
            TcMode::Netlink
        );
        assert_eq!(
            resolve(TcAttachArg::Auto, Some(k(5, 10, 0))),
            TcMode::Netlink
        );
        assert_eq!(resolve(TcAttachArg::Auto, None), TcMode::Netlink);
        assert_eq!(
            resolve(TcAttachArg::Netlink, Some(k(6, 18, 0))),
            TcMode::Netlink
        );
        assert_eq!(resolve(TcAttachArg::Tcx, Some(k(5, 10, 0))), TcMode::Tcx);
    }

    #[test]
    fn markers_name_their_interface() {
        let layout = PinLayout::new("/sys/fs/bpf/x");
        let m = marker(&layout, "eth0.100");
        assert_eq!(m, Path::new("/sys/fs/bpf/x/v1/links/tc_netlink@eth0%2E100"));
        assert_eq!(marked_interface(&m).as_deref(), Some("eth0.100"));
        assert_eq!(marked_interface(&layout.link("tc_egress", "eth0")), None);
    }
}
