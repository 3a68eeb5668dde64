//! `BPF_MAP_UPDATE_BATCH` for array maps: a whole Maglev table (1,021 slots
//! by default) in one system call instead of one call per slot, so that
//! 10,000 Services load in about a second rather than tens. aya has no
//! batch operations; the call is small enough to make here (Linux 5.6+).

use std::os::fd::{AsRawFd, BorrowedFd};

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `values[i]` at index `first + i` of the `u32` array map `fd`.
pub fn update_u32_array(fd: BorrowedFd<'_>, first: u32, values: &[u32]) -> std::io::Result<()> {
    let keys: Vec<u32> = (first..).take(values.len()).collect();
    let mut done = 0usize;
    while done < values.len() {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: u32::try_from(values.len() - done).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the kernel reads `count` keys and values from the two
        // slices, alive for the call, and writes back `count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if attr.count == 0 {
            return Err(std::io::Error::other("batch update wrote nothing"));
        }
        done += attr.count as usize;
    }
    Ok(())
}
