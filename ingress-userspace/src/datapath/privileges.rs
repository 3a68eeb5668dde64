//! A check, before touching the kernel, that the process may load and attach
//! eBPF programs, so that the failure is one clear line instead of an EPERM
//! from deep inside a map or program load.

use std::fs;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Which of the needed capabilities the effective set lacks, by name.
pub fn missing_capabilities() -> Vec<&'static str> {
    let eff = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
        .unwrap_or(0);
    missing_from(eff)
}

fn effective_caps(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn missing_from(eff: u64) -> Vec<&'static str> {
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    // CAP_SYS_ADMIN implies what CAP_BPF and CAP_PERFMON grant.
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert!(missing_from(u64::MAX).is_empty());
    }

    #[test]
    fn nothing_misses_all_three() {
        assert_eq!(missing_from(0), ["CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn bpf_and_perfmon_without_sys_admin_suffice() {
        let eff = (1 << CAP_NET_ADMIN) | (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert!(missing_from(eff).is_empty());
    }

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(s), Some(0x1ff_ffff_ffff));
    }
}
