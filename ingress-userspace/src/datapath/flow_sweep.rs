//! Removes closed flows from the connection and reverse tables once their
//! close timeout has passed. The programs mark an entry closing at the
//! first TCP FIN or RST (in either direction); the LRU tables would only
//! evict such entries under pressure, so the agent sweeps them out and
//! keeps the room for live flows.

use aya::maps::{HashMap, MapData};
use ingress_common::l4::{
    FlowKey, FlowValue, L4_FLOWS, L4_REVNAT, POD_TIME_WAIT_S, REV_REMOTE, RevValue,
};

use super::{DatapathError, LoadedPrograms};

/// Whether an entry marked closing at `closed_at` (seconds of the monotonic
/// clock, 0 for an open flow) has outlived `timeout_s` at `now_s`.
pub fn expired(closed_at: u32, now_s: u32, timeout_s: u32) -> bool {
    closed_at != 0 && now_s.wrapping_sub(closed_at) > timeout_s
}

/// How long a closed reverse entry with `flags` is kept: a remote flow's
/// (its SNAT port) until the pod's TIME_WAIT for it is over, so the
/// programs know the port's past and give it to another client last; any
/// other for the close timeout.
pub fn reverse_timeout(flags: u8, timeout_s: u32) -> u32 {
    if flags & REV_REMOTE != 0 {
        timeout_s.max(POD_TIME_WAIT_S)
    } else {
        timeout_s
    }
}

/// The clock the programs stamp entries with (`bpf_ktime_get_ns`, which is
/// CLOCK_MONOTONIC), in seconds.
pub fn monotonic_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u32).max(1)
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub flows: usize,
    pub reverse: usize,
}

/// The connection and reverse tables of a loaded object.
pub struct FlowSweeper {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    reverse: HashMap<MapData, FlowKey, RevValue>,
    timeout_s: u32,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl FlowSweeper {
    /// Takes the two tables out of `programs`.
    pub fn take(programs: &mut LoadedPrograms, timeout_s: u32) -> Result<Self, DatapathError> {
        let mut take = |name: &'static str| {
            programs
                .ebpf
                .take_map(name)
                .ok_or(DatapathError::MissingMap(name))
        };
        Ok(FlowSweeper {
            flows: HashMap::try_from(take(L4_FLOWS)?).map_err(map_err(L4_FLOWS))?,
            reverse: HashMap::try_from(take(L4_REVNAT)?).map_err(map_err(L4_REVNAT))?,
            timeout_s,
        })
    }

    /// A flow's entry, if the table holds it.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows.get(key, 0).ok()
    }

    /// A reply's reverse entry, if the table holds it.
    pub fn reverse(&self, key: &FlowKey) -> Option<RevValue> {
        self.reverse.get(key, 0).ok()
    }

    /// Removes the entries closed longer than the timeout at `now_s`. An
    /// entry that vanished meanwhile (LRU eviction) is no error.
    ///
    /// Each entry is read again just before it is removed: the programs
    /// give a closed flow's tuple or SNAT port to a new flow (a client
    /// reusing its source port; a SNAT port closed `SNAT_REUSE_S` ago)
    /// while the sweep walks the table, and removing the new, open entry
    /// found under an old key would leave that connection without its
    /// translation (its pod's replies reach the node's stack, which resets
    /// them, for as long as the client retries).
    pub fn sweep(&mut self, now_s: u32) -> Swept {
        let timeout = self.timeout_s;
        let old_flows: Vec<FlowKey> = self
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| expired(v.closed_at, now_s, timeout))
            .map(|(k, _)| k)
            .collect();
        let old_reverse: Vec<FlowKey> = self
            .reverse
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| expired(v.closed_at, now_s, reverse_timeout(v.flags, timeout)))
            .map(|(k, _)| k)
            .collect();
        let still = |closed_at: Option<u32>, timeout: u32| {
            closed_at.is_some_and(|c| expired(c, now_s, timeout))
        };
        Swept {
            flows: old_flows
                .iter()
                .filter(|k| {
                    still(self.flows.get(k, 0).ok().map(|v| v.closed_at), timeout)
                        && self.flows.remove(k).is_ok()
                })
                .count(),
            reverse: old_reverse
                .iter()
                .filter(|k| {
                    let v = self.reverse.get(k, 0).ok();
                    still(
                        v.map(|v| v.closed_at),
                        v.map_or(timeout, |v| reverse_timeout(v.flags, timeout)),
                    ) && self.reverse.remove(k).is_ok()
                })
                .count(),
        }
    }

    /// Sweeps every `every` until `stop` is set, on a thread of its own
    /// (map iteration is a syscall per entry: kept off the async runtime).
    pub fn spawn(
        mut self,
        every: std::time::Duration,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("flow-sweep".into())
            .spawn(move || {
                let tick = std::time::Duration::from_millis(200);
                let mut waited = std::time::Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    waited += tick;
                    if waited < every {
                        continue;
                    }
                    waited = std::time::Duration::ZERO;
                    let swept = self.sweep(monotonic_s());
                    if swept != Swept::default() {
                        tracing::debug!(
                            flows = swept.flows,
                            reverse = swept.reverse,
                            "swept closed flows"
                        );
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flows_never_expire_and_closed_ones_after_the_timeout() {
        assert!(!expired(0, 1_000, 10));
        assert!(!expired(100, 105, 10));
        assert!(!expired(100, 110, 10));
        assert!(expired(100, 111, 10));
        // Timeout 0: any later second.
        assert!(!expired(100, 100, 0));
        assert!(expired(100, 101, 0));
        // The u32 seconds counter wrapping is still a difference.
        assert!(expired(u32::MAX - 5, 10, 10));
    }

    #[test]
    fn remote_reverse_entries_outlive_the_pods_time_wait() {
        assert_eq!(reverse_timeout(0, 10), 10);
        assert_eq!(reverse_timeout(REV_REMOTE, 10), POD_TIME_WAIT_S);
        assert_eq!(reverse_timeout(REV_REMOTE, 300), 300);
    }

    #[test]
    fn the_clock_is_never_zero() {
        assert!(monotonic_s() >= 1);
    }
}
