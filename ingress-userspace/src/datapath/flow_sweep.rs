//! Removes closed flows from the connection and reverse tables once their
//! close timeout has passed. The programs mark an entry closing at the
//! first TCP FIN or RST (in either direction); the LRU tables would only
//! evict such entries under pressure, so the agent sweeps them out and
//! keeps the room for live flows.
//!
//! It also moves IPv4 flows an agent before the IPv4 connection table
//! recorded in the IPv6 one (`L4_FLOWS`, adopted from its pins) to
//! `L4_FLOWS_V4`, where the programs now look them up.

use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use ingress_common::l4::{
    FlowKey, FlowKeyV4, FlowValue, L4_FLOWS, L4_FLOWS_V4, L4_REVNAT, POD_TIME_WAIT_S, REV_REMOTE,
    RevValue,
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

/// The map-update flag that inserts only a key not there yet (uapi
/// `linux/bpf.h`).
const BPF_NOEXIST: u64 = 1;

/// What one sweep removed (and moved).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// From both connection tables.
    pub flows: usize,
    pub reverse: usize,
    /// IPv4 flows moved from the IPv6 table (see
    /// [`FlowSweeper::move_ipv4_flows`]).
    pub moved: usize,
}

/// The connection tables (IPv4 and IPv6) and the reverse table of a loaded
/// object.
pub struct FlowSweeper {
    flows_v4: HashMap<MapData, FlowKeyV4, FlowValue>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    reverse: HashMap<MapData, FlowKey, RevValue>,
    timeout_s: u32,
}

/// Removes the entries of `map` whose close (`closed_at`) is older than
/// their timeout (`timeout`) at `now_s`; how many went. Each entry is read
/// again just before it is removed (see [`FlowSweeper::sweep`]).
fn sweep_map<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    now_s: u32,
    closed_at: impl Fn(&V) -> u32,
    timeout: impl Fn(&V) -> u32,
) -> usize {
    let is_old = |v: &V| expired(closed_at(v), now_s, timeout(v));
    let old: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| is_old(v))
        .map(|(k, _)| k)
        .collect();
    remove_still_old(map, &old, is_old)
}

/// Removes those of `keys` whose entry, read again, `is_old`; how many
/// went.
fn remove_still_old<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    keys: &[K],
    is_old: impl Fn(&V) -> bool,
) -> usize {
    keys.iter()
        .filter(|k| map.get(k, 0).is_ok_and(|v| is_old(&v)) && map.remove(k).is_ok())
        .count()
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl FlowSweeper {
    /// Takes the three tables out of `programs`.
    pub fn take(programs: &mut LoadedPrograms, timeout_s: u32) -> Result<Self, DatapathError> {
        let mut take = |name: &'static str| {
            programs
                .ebpf
                .take_map(name)
                .ok_or(DatapathError::MissingMap(name))
        };
        Ok(FlowSweeper {
            flows_v4: HashMap::try_from(take(L4_FLOWS_V4)?).map_err(map_err(L4_FLOWS_V4))?,
            flows: HashMap::try_from(take(L4_FLOWS)?).map_err(map_err(L4_FLOWS))?,
            reverse: HashMap::try_from(take(L4_REVNAT)?).map_err(map_err(L4_REVNAT))?,
            timeout_s,
        })
    }

    /// A flow's entry, if the table of its IP version holds it.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        match FlowKeyV4::of(key) {
            Some(k4) => self.flows_v4.get(&k4, 0).ok(),
            None => self.flows.get(key, 0).ok(),
        }
    }

    /// Moves the IPv4 flows found in the IPv6 connection table (recorded
    /// there by an agent before the IPv4 table, whose pinned table this
    /// one adopted) to the IPv4 table, where the programs look them up;
    /// a flow the IPv4 table already knows keeps that entry. Returns how
    /// many moved. Run once before the programs attach and then with every
    /// sweep, for flows the old programs recorded in between.
    pub fn move_ipv4_flows(&mut self) -> usize {
        let entries: Vec<(FlowKey, FlowValue)> = self.flows.iter().filter_map(Result::ok).collect();
        self.move_ipv4_entries(entries)
    }

    /// Moves the IPv4 ones of `entries` (read from the IPv6 table) to the
    /// IPv4 table; returns how many moved.
    fn move_ipv4_entries(&mut self, entries: Vec<(FlowKey, FlowValue)>) -> usize {
        let mut moved = 0;
        for (k, v) in entries {
            let Some(k4) = FlowKeyV4::of(&k) else {
                continue;
            };
            // An entry the new programs made meanwhile stays.
            if self.flows_v4.insert(k4, v, BPF_NOEXIST).is_ok() {
                moved += 1;
            }
            let _ = self.flows.remove(&k);
        }
        moved
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
    ///
    /// The IPv6 table is walked once for both of its chores: IPv4 flows
    /// found there are moved ([`FlowSweeper::move_ipv4_flows`]), closed
    /// flows removed.
    pub fn sweep(&mut self, now_s: u32) -> Swept {
        let timeout = self.timeout_s;
        let is_old = |v: &FlowValue| expired(v.closed_at, now_s, timeout);
        let ipv6_table: Vec<(FlowKey, FlowValue)> =
            self.flows.iter().filter_map(Result::ok).collect();
        let old: Vec<FlowKey> = ipv6_table
            .iter()
            .filter(|(k, v)| FlowKeyV4::of(k).is_none() && is_old(v))
            .map(|(k, _)| *k)
            .collect();
        let moved = self.move_ipv4_entries(ipv6_table);
        Swept {
            flows: sweep_map(&mut self.flows_v4, now_s, |v| v.closed_at, |_| timeout)
                + remove_still_old(&mut self.flows, &old, is_old),
            moved,
            reverse: sweep_map(
                &mut self.reverse,
                now_s,
                |v| v.closed_at,
                |v| reverse_timeout(v.flags, timeout),
            ),
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
                    if swept.moved > 0 {
                        tracing::info!(
                            moved = swept.moved,
                            "IPv4 flows moved to the IPv4 connection table"
                        );
                    }
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
