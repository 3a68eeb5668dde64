//! Per-CPU counter arrays, indexed by [`ingress_common::counters::Counter`].

use aya_ebpf::{macros::map, maps::PerCpuArray};
use ingress_common::counters::{COUNTER_SLOTS, Counter};

#[map(name = "XDP_COUNTERS")]
pub static XDP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map(name = "TC_COUNTERS")]
pub static TC_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Adds one to `counter` on this CPU. Per-CPU slots need no atomics.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, counter: Counter) {
    if let Some(slot) = map.get_ptr_mut(counter.index()) {
        // SAFETY: the pointer is this CPU's slot of a live map value.
        unsafe { *slot += 1 };
    }
}
