//! Internet checksum arithmetic (RFC 1071) and incremental update
//! (RFC 1624), in the one's-complement form the IP, TCP and UDP headers use.
//!
//! Values are 16-bit words in network byte order read as big-endian `u16`
//! (so `0x4500` for the bytes `45 00`).

/// Adds 16-bit big-endian words of `data` to `sum` (an odd trailing byte is
/// padded with zero), without folding.
pub fn add_bytes(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum = sum.wrapping_add(u16::from_be_bytes([w[0], w[1]]) as u32);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add((*last as u32) << 8);
    }
    sum
}

/// Folds a 32-bit accumulator into 16 bits with end-around carry.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field value for `data` (whose checksum field is zero), with
/// `initial` carrying, for example, a pseudo-header sum.
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    !fold(add_bytes(initial, data))
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word changes from
/// `old` to `new`. `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// The new checksum after a 32-bit field (an IPv4 address) changes.
#[inline(always)]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let c = replace16(check, (old >> 16) as u16, (new >> 16) as u16);
    replace16(c, old as u16, new as u16)
}

/// The new checksum after a 128-bit field (an IPv6 address) changes.
#[inline(always)]
pub fn replace128(mut check: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    let mut i = 0;
    while i < 16 {
        check = replace16(
            check,
            u16::from_be_bytes([old[i], old[i + 1]]),
            u16::from_be_bytes([new[i], new[i + 1]]),
        );
        i += 2;
    }
    check
}

/// Sum of the IPv4 pseudo-header (RFC 793 / 768) for an L4 checksum.
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let mut sum = add_bytes(0, &src);
    sum = add_bytes(sum, &dst);
    sum + proto as u32 + l4_len as u32
}

/// Sum of the IPv6 pseudo-header (RFC 8200 section 8.1).
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, l4_len: u32) -> u32 {
    let mut sum = add_bytes(0, src);
    sum = add_bytes(sum, dst);
    sum.wrapping_add(l4_len >> 16)
        .wrapping_add(l4_len & 0xffff)
        .wrapping_add(next_header as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 header example from RFC 1071's era, widely used:
    /// 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn full_checksum_matches_known_header() {
        assert_eq!(checksum(0, &HDR), 0xb861);
        let mut with = HDR;
        with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        // A header with a correct checksum sums to 0xffff, i.e. checks to 0.
        assert_eq!(checksum(0, &with), 0);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(add_bytes(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0x0001_ffff), 0x0001);
        assert_eq!(fold(0xffff_ffff), 0xffff);
    }

    #[test]
    fn incremental_update_equals_recompute_for_address_rewrite() {
        let mut hdr = HDR;
        let check = checksum(0, &hdr);
        let old = u32::from_be_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
        let new = u32::from_be_bytes([198, 18, 1, 200]);
        hdr[16..20].copy_from_slice(&new.to_be_bytes());
        assert_eq!(replace32(check, old, new), checksum(0, &hdr));
    }

    #[test]
    fn incremental_update_over_many_values() {
        // Exhaustive over one word against a fixed rest of the header.
        let base = checksum(0, &HDR);
        let old = u16::from_be_bytes([HDR[4], HDR[5]]);
        for new in (0u32..=0xffff).step_by(7) {
            let mut hdr = HDR;
            hdr[4..6].copy_from_slice(&(new as u16).to_be_bytes());
            let want = checksum(0, &hdr);
            let got = replace16(base, old, new as u16);
            // 0x0000 and 0xffff are the same one's-complement value.
            assert!(got == want || (got == 0xffff && want == 0) || (got == 0 && want == 0xffff));
        }
    }

    #[test]
    fn ipv6_address_rewrite() {
        let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let new_dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x20];
        let payload = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let c = checksum(pseudo_header_v6(&src, &dst, 17, 8), &payload);
        let want = checksum(pseudo_header_v6(&src, &new_dst, 17, 8), &payload);
        assert_eq!(replace128(c, &dst, &new_dst), want);
    }

    #[test]
    fn pseudo_header_v4_counts_protocol_and_length() {
        let s = pseudo_header_v4([0, 0, 0, 0], [0, 0, 0, 0], 6, 20);
        assert_eq!(s, 26);
    }
}
