//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), shared by the
//! agent (which builds the lookup tables) and the XDP program (which hashes
//! flows into them).
//!
//! A table has a prime number `M` of slots, each naming a backend. Every
//! backend walks its own permutation of the slots (from two hashes of its
//! identity) and the backends take turns claiming their next free
//! preferred slot. The result depends only on the set of backend
//! identities and `M`: every ingress node builds the same table for the
//! same endpoints, so any node picks the same backend for a flow. When a
//! backend leaves, its slots are redistributed and the others' slots mostly
//! stay where they were.

/// Default table size: a prime with room for 100 slots per backend for
/// services of up to 10 endpoints; larger services want a larger
/// (configurable) prime.
pub const DEFAULT_TABLE_SIZE: u32 = 1021;

/// 64-bit FNV-1a over `data`, finished with a splitmix64 round mixed with
/// `seed`. Deterministic on every platform (no per-process keys).
#[inline(always)]
pub fn hash64(seed: u64, data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// splitmix64's finalizer: spreads every input bit over the output.
#[inline(always)]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The smallest prime `>= n`.
pub fn next_prime(n: u32) -> u32 {
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

/// Per-backend state while filling a table.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cursor {
    offset: u32,
    skip: u32,
    next: u32,
}

/// Fills `table` (its length must be prime) with indexes into `keys`,
/// where `keys[i]` identifies backend `i` (e.g. a hash of its address and
/// port). `cursors` is scratch space, one per key. Order of `keys` does not
/// matter for which *key* owns a slot only if the caller sorts them; the
/// agent sorts by identity so every node agrees.
///
/// With no keys every slot is `u32::MAX` (no backend).
pub fn populate(keys: &[u64], table: &mut [u32], cursors: &mut [Cursor]) {
    let m = table.len() as u32;
    for slot in table.iter_mut() {
        *slot = u32::MAX;
    }
    let n = keys.len().min(cursors.len());
    if n == 0 || m == 0 {
        return;
    }
    for (key, cursor) in keys.iter().zip(cursors.iter_mut()) {
        let k = key.to_le_bytes();
        *cursor = Cursor {
            offset: (hash64(0x6d61_676c_6576_3031, &k) % m as u64) as u32,
            skip: if m > 1 {
                (hash64(0x6d61_676c_6576_3032, &k) % (m as u64 - 1)) as u32 + 1
            } else {
                1
            },
            next: 0,
        };
    }
    let mut filled = 0u32;
    'fill: loop {
        for (i, c) in cursors[..n].iter_mut().enumerate() {
            // Walk backend i's permutation to its next free slot.
            loop {
                let slot = ((c.offset as u64 + c.next as u64 * c.skip as u64) % m as u64) as usize;
                c.next += 1;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break 'fill;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, vec, vec::Vec};

    use super::*;

    fn build(keys: &[u64], m: u32) -> Vec<u32> {
        let mut table = vec![0u32; m as usize];
        let mut cursors = vec![Cursor::default(); keys.len()];
        populate(keys, &mut table, &mut cursors);
        table
    }

    fn keys(n: u64) -> Vec<u64> {
        (1..=n)
            .map(|i| hash64(7, &(0xc612_0000u64 + i).to_le_bytes()))
            .collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(65537));
        assert!(!is_prime(1));
        assert!(!is_prime(65535));
        assert_eq!(next_prime(1000), 1009);
        assert_eq!(next_prime(1021), 1021);
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_even() {
        let k = keys(10);
        let t = build(&k, 1021);
        let mut counts = HashMap::new();
        for s in &t {
            assert!((*s as usize) < k.len());
            *counts.entry(*s).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 10);
        // Maglev balances to within about one slot per backend round.
        for c in counts.values() {
            assert!(
                (101..=103).contains(c),
                "uneven share {c} of 1021: {counts:?}"
            );
        }
    }

    #[test]
    fn two_independent_builds_are_identical() {
        let k = keys(17);
        assert_eq!(build(&k, 2003), build(&k.clone(), 2003));
    }

    #[test]
    fn no_backends_means_no_slot() {
        assert!(build(&[], 7).iter().all(|s| *s == u32::MAX));
    }

    /// Flows hashed into the table: removing one of N backends moves its
    /// own flows (about 1/N) and few others.
    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [5u64, 10, 20] {
            let m = next_prime(100 * n as u32);
            let all = keys(n);
            let before = build(&all, m);
            let removed = (n / 2) as usize;
            let rest: Vec<u64> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, k)| *k)
                .collect();
            let after = build(&rest, m);
            let owner_before = |f: u64| all[before[(f % m as u64) as usize] as usize];
            let owner_after = |f: u64| rest[after[(f % m as u64) as usize] as usize];
            let flows = 100_000u64;
            let (mut moved_removed, mut moved_other) = (0u64, 0u64);
            for i in 0..flows {
                let f = hash64(99, &i.to_le_bytes());
                let (b, a) = (owner_before(f), owner_after(f));
                if b == all[removed] {
                    moved_removed += 1;
                } else if a != b {
                    moved_other += 1;
                }
            }
            let share = moved_removed as f64 / flows as f64;
            let others = moved_other as f64 / flows as f64;
            assert!(
                (share - 1.0 / n as f64).abs() < 0.02,
                "n={n}: the removed backend had {share}"
            );
            // Maglev promises minimal, not zero, disruption: with M = 100 N
            // about 2-3% of the other flows are remapped (measured: 2.8% at
            // N=5, 2.0% at N=10, 2.8% at N=20). Established flows stay put
            // regardless: the connection table pins them.
            assert!(others < 0.04, "n={n}: {others} of the other flows moved");
        }
    }
}
