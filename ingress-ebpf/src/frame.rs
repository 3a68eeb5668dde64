//! Bounds-checked reads of packet memory: the kernel side of
//! [`ingress_common::parse::Frame`].

use ingress_common::{nat::FrameMut, parse::Frame};

/// The `[data, data_end)` window of an XDP or TC context.
pub struct PacketBounds {
    start: usize,
    end: usize,
}

impl PacketBounds {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        PacketBounds { start, end }
    }
}

/// No header the programs read lies further in than this; the bound also
/// tells the verifier that an offset read back from the stack (in a
/// function that is not inlined) is small.
const MAX_OFFSET: usize = 0xffff;

impl Frame for PacketBounds {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_OFFSET {
            return None;
        }
        let at = self.start + offset;
        // The comparison against `end` (data_end) is what lets the verifier
        // accept the read below.
        if at + N > self.end {
            return None;
        }
        // SAFETY: [at, at + N) lies inside the packet, checked just above.
        Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }
}

impl FrameMut for PacketBounds {
    #[inline(always)]
    fn write<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> bool {
        if offset > MAX_OFFSET {
            return false;
        }
        let at = self.start + offset;
        if at + N > self.end {
            return false;
        }
        // SAFETY: [at, at + N) lies inside the packet, checked just above;
        // XDP data and a pulled TC skb head are writable.
        unsafe { core::ptr::write_unaligned(at as *mut [u8; N], bytes) };
        true
    }
}
