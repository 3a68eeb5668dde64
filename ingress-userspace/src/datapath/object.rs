//! The eBPF object built by `build.rs`, embedded in the binary.

/// The ELF object holding the XDP and TC programs and their maps.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-ebpf"));
