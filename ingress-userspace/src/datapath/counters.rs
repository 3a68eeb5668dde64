//! Reading the per-CPU counter arrays and exporting them as metrics.

use aya::maps::{MapData, PerCpuArray};
use ingress_common::counters::{Counter, CounterKind};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

use super::DatapathError;

/// Which program a counter array belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc_egress",
        }
    }
}

/// One program's counter array.
pub struct CounterMap {
    pub hook: Hook,
    map: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for CounterMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterMap")
            .field("hook", &self.hook)
            .finish()
    }
}

impl CounterMap {
    pub fn new(hook: Hook, map: PerCpuArray<MapData, u64>) -> Self {
        CounterMap { hook, map }
    }

    /// The value of one counter, summed over CPUs.
    pub fn get(&self, counter: Counter) -> Result<u64, DatapathError> {
        let values =
            self.map
                .get(&counter.index(), 0)
                .map_err(|source| DatapathError::ReadCounters {
                    hook: self.hook.name(),
                    source,
                })?;
        Ok(values.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
    }

    /// Every counter with its value.
    pub fn read_all(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        Counter::ALL
            .iter()
            .map(|c| Ok((*c, self.get(*c)?)))
            .collect()
    }
}

/// The metric families of the counters: (name without `_total`, help,
/// kind, label naming the counter; empty for the total).
pub const FAMILIES: [(&str, &str, CounterKind, &str); 4] = [
    (
        "ingress_datapath_packets",
        "Frames seen by each eBPF program.",
        CounterKind::Total,
        "",
    ),
    (
        "ingress_datapath_packet_class",
        "Frames by class (exactly one per frame: protocol, fragment, truncated or malformed).",
        CounterKind::Class,
        "class",
    ),
    (
        "ingress_datapath_packet_flags",
        "Frames carrying a VLAN tag or IPv4 options.",
        CounterKind::Flag,
        "flag",
    ),
    (
        "ingress_datapath_l4_events",
        "What the L4 service path did: frontend hits, connection-table hits, new flows, translations.",
        CounterKind::Event,
        "event",
    ),
];

/// A counter's name as `/metrics` shows it, without the hook label:
/// `ingress_datapath_l4_events_total{event="l4_new_flow"}`.
pub fn metric_name(counter: Counter) -> String {
    let (family, _, _, label) = FAMILIES
        .iter()
        .find(|f| f.2 == counter.kind())
        .copied()
        .unwrap_or(FAMILIES[0]);
    if label.is_empty() {
        format!("{family}_total")
    } else {
        format!("{family}_total{{{label}=\"{}\"}}", counter.name())
    }
}

/// Exports the counter arrays on each scrape.
#[derive(Debug, Default)]
pub struct DatapathCollector {
    pub maps: Vec<CounterMap>,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut rows: Vec<(&'static str, Counter, u64)> = Vec::new();
        for m in &self.maps {
            match m.read_all() {
                Ok(values) => rows.extend(values.into_iter().map(|(c, v)| (m.hook.name(), c, v))),
                Err(e) => tracing::warn!(error = %e, "reading eBPF counters for /metrics"),
            }
        }
        let families = FAMILIES;
        for (name, help, kind, label) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (hook, c, v) in rows.iter().filter(|r| r.1.kind() == kind) {
                let counter = ConstCounter::new(*v);
                if label.is_empty() {
                    let labels = [("hook", *hook)];
                    counter.encode(family.encode_family(&labels)?)?;
                } else {
                    let labels = [("hook", *hook), (label, c.name())];
                    counter.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_follow_the_families() {
        assert_eq!(
            metric_name(Counter::Packets),
            "ingress_datapath_packets_total"
        );
        assert_eq!(
            metric_name(Counter::L4NewFlow),
            "ingress_datapath_l4_events_total{event=\"l4_new_flow\"}"
        );
        assert_eq!(
            metric_name(Counter::Ipv4Tcp),
            "ingress_datapath_packet_class_total{class=\"ipv4_tcp\"}"
        );
    }
}
