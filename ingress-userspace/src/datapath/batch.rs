//! Bulk writes to `u32` array maps, which aya does not offer: a shared
//! memory mapping of a `BPF_F_MMAPABLE` array (Linux 5.5+), where a whole
//! Maglev table is a slice copy, else `BPF_MAP_UPDATE_BATCH` (Linux 5.6+),
//! one system call per table instead of one per slot (10,000 Services of
//! 1,021 slots are 10 million slots).

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

/// A `BPF_F_MMAPABLE` `u32` array mapped into this process: stores land in
/// the map the programs read (each slot is written whole). The kernel lays
/// array elements out 8 bytes apart (the value size rounded up to 8), so
/// slot `i` is the low half (little-endian) of the `i`th 8-byte word.
pub struct MappedArray {
    ptr: std::ptr::NonNull<u64>,
    len: usize,
}

/// Bytes between two elements of a kernel array map of 4-byte values.
const ELEM_STRIDE: usize = 8;

// SAFETY: the mapping is owned by this value and only written through
// `&mut self`.
unsafe impl Send for MappedArray {}

impl MappedArray {
    /// Maps `entries` slots of the array `fd`; fails when the map was not
    /// created mappable.
    pub fn new(fd: BorrowedFd<'_>, entries: usize) -> std::io::Result<Self> {
        let bytes = entries * ELEM_STRIDE;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // the length against the map's size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u64>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(MappedArray { ptr, len: entries })
    }

    /// Writes `values` from slot `first` on; false past the end.
    pub fn write(&mut self, first: u32, values: &[u32]) -> bool {
        let first = first as usize;
        let Some(end) = first.checked_add(values.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        // SAFETY: [first, end) lies inside the mapping (checked above), and
        // the programs only ever read these slots.
        let slots = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) };
        for (slot, v) in slots[first..end].iter_mut().zip(values) {
            *slot = u64::from(*v).to_le();
        }
        true
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len * ELEM_STRIDE) };
    }
}
