//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table
//! that maps a flow's hash to one of a service's backends so that every
//! backend gets an equal share of the table and a change of the backend
//! set moves few flows. The built-in Service load balancer
//! ([`crate::service`]) builds one per ClusterIP port and picks a new
//! flow's backend with it.
//!
//! The table has a prime number of entries `M` (at least a few times the
//! backends; [`DEFAULT_SIZE`] suits up to about a hundred, [`SMALL_SIZE`]
//! up to ten, see [`size_for`]). Each backend,
//! named by a 64-bit key (its address and port), gets a permutation of the
//! entries from two hashes of its key (`offset`, `skip`); the backends take
//! turns claiming the next free entry of their permutation until the table
//! is full. So the shares differ by at most one entry, and the result
//! depends only on the keys and their order: every node builds the same
//! table from the same backends.
//!
//! Invariants: built on the control side ([`Maglev::new`] allocates and
//! costs O(M log M) on average); [`Maglev::pick`] is one multiply and one
//! load, no allocation.

/// A prime table size for up to about a hundred backends.
pub const DEFAULT_SIZE: usize = 16_381;

/// A prime table size for ports of up to [`SMALL_MAX_BACKENDS`] backends
/// (2 KiB instead of 32: a cluster of 10,000 Services holds 20 MB of
/// tables instead of 330, and builds them 16 times faster).
pub const SMALL_SIZE: usize = 1_021;

/// The most backends a [`SMALL_SIZE`] table serves: at least 100 entries
/// each, so shares stay within 1% of each other as in [`DEFAULT_SIZE`]'s
/// tables of up to about a hundred backends.
pub const SMALL_MAX_BACKENDS: usize = 10;

/// The table size for a port of `backends` backends: [`SMALL_SIZE`] up to
/// [`SMALL_MAX_BACKENDS`], else [`DEFAULT_SIZE`]. A port whose backends
/// cross that line gets a table of the other size, which maps most hashes
/// anew: flows already in the flow table keep their backend (the table
/// only picks for new flows), so what moves is new flows' placement, once.
pub fn size_for(backends: usize) -> usize {
    if backends <= SMALL_MAX_BACKENDS {
        SMALL_SIZE
    } else {
        DEFAULT_SIZE
    }
}

/// Why a table cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is not a prime number (the permutations need it).
    SizeNotPrime(usize),
    /// More backends than entries (or than a `u16` index holds).
    TooManyBackends(usize),
}

impl std::fmt::Display for MaglevError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaglevError::SizeNotPrime(m) => write!(f, "table size {m} is not a prime"),
            MaglevError::TooManyBackends(n) => {
                write!(f, "{n} backends do not fit the table")
            }
        }
    }
}

impl std::error::Error for MaglevError {}

/// A Maglev lookup table: entry -> index of a backend in the list it was
/// built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    entries: Box<[u16]>,
}

#[inline]
fn mix(x: u64, k: u64) -> u64 {
    let p = u128::from(x ^ k) * 0x9e37_79b9_7f4a_7c15u128;
    (p as u64) ^ ((p >> 64) as u64)
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

impl Maglev {
    /// Builds the table of `size` entries (a prime) for `backends` (their
    /// keys, e.g. `address << 16 | port`). No backends: an empty table
    /// whose [`pick`](Self::pick) says `None`.
    pub fn new(backends: &[u64], size: usize) -> Result<Maglev, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::SizeNotPrime(size));
        }
        if backends.len() > size || backends.len() > usize::from(u16::MAX) {
            return Err(MaglevError::TooManyBackends(backends.len()));
        }
        if backends.is_empty() {
            return Ok(Maglev {
                entries: Box::new([]),
            });
        }
        let m = size as u64;
        let perm: Vec<(u64, u64)> = backends
            .iter()
            .map(|&k| {
                let offset = mix(k, 0x6f66_6673_6574) % m;
                let skip = mix(k, 0x736b_6970) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; backends.len()];
        let mut entries = vec![u16::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for (i, &(offset, skip)) in perm.iter().enumerate() {
                let mut c = ((offset + next[i] * skip) % m) as usize;
                while entries[c] != u16::MAX {
                    next[i] += 1;
                    c = ((offset + next[i] * skip) % m) as usize;
                }
                entries[c] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Ok(Maglev {
            entries: entries.into_boxed_slice(),
        })
    }

    /// The backend (index into the list the table was built from) for a
    /// flow with hash `flow_hash`; `None` if there are no backends.
    #[inline]
    pub fn pick(&self, flow_hash: u32) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let i = (u64::from(flow_hash) * self.entries.len() as u64) >> 32;
        Some(usize::from(self.entries[i as usize]))
    }

    /// Entries of the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries each of `n` backends holds.
    pub fn shares(&self, n: usize) -> Vec<usize> {
        let mut s = vec![0; n];
        for &e in self.entries.iter() {
            if let Some(c) = s.get_mut(usize::from(e)) {
                *c += 1;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u64) -> Vec<u64> {
        // 10.244.x.y:80
        (0..n)
            .map(|i| ((0x0af4_0000u64 + 7 * i + 2) << 16) | 80)
            .collect()
    }

    #[test]
    fn shares_differ_by_at_most_one_entry() {
        for n in [1, 2, 3, 7, 10, 100] {
            let t = Maglev::new(&keys(n), DEFAULT_SIZE).unwrap();
            let s = t.shares(n as usize);
            let (lo, hi) = (s.iter().min().unwrap(), s.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} backends: shares {lo}..{hi}");
            assert_eq!(s.iter().sum::<usize>(), DEFAULT_SIZE);
        }
    }

    #[test]
    fn small_tables_are_prime_and_as_even_as_the_default_ones() {
        assert!(is_prime(SMALL_SIZE) && is_prime(DEFAULT_SIZE));
        for n in 1..=SMALL_MAX_BACKENDS {
            assert_eq!(size_for(n), SMALL_SIZE);
            assert!(SMALL_SIZE / n >= 100, "{n} backends");
            let t = Maglev::new(&keys(n as u64), size_for(n)).unwrap();
            let s = t.shares(n);
            assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
        }
        assert_eq!(size_for(SMALL_MAX_BACKENDS + 1), DEFAULT_SIZE);
        // Removing one of ten backends from a small table moves few of
        // the other flows too.
        let all = keys(10);
        let before = Maglev::new(&all, SMALL_SIZE).unwrap();
        let after = Maglev::new(&all[1..], SMALL_SIZE).unwrap();
        let moved = before
            .entries
            .iter()
            .zip(after.entries.iter())
            .filter(|(b, a)| **b != 0 && usize::from(**b) != usize::from(**a) + 1)
            .count();
        assert!(moved < SMALL_SIZE / 20, "{moved} other entries moved");
    }

    #[test]
    fn removing_a_backend_moves_few_other_flows() {
        let all = keys(10);
        let before = Maglev::new(&all, DEFAULT_SIZE).unwrap();
        let mut rest = all.clone();
        rest.remove(3);
        let after = Maglev::new(&rest, DEFAULT_SIZE).unwrap();
        // Index in `rest` -> index in `all`.
        let orig = |i: usize| if i >= 3 { i + 1 } else { i };
        let (mut moved, mut kept) = (0, 0);
        for (b, a) in before.entries.iter().zip(after.entries.iter()) {
            if *b == 3 {
                continue; // its flows must move
            }
            if usize::from(*b) == orig(usize::from(*a)) {
                kept += 1;
            } else {
                moved += 1;
            }
        }
        // Under 1% here (the paper: "a few percent"); a modulo hash would
        // move about 90% of them.
        let frac = moved as f64 / (moved + kept) as f64;
        assert!(
            frac < 0.02,
            "{moved} of {} other entries moved",
            moved + kept
        );
    }

    #[test]
    fn adding_a_backend_takes_about_its_share() {
        let all = keys(11);
        let before = Maglev::new(&all[..10], DEFAULT_SIZE).unwrap();
        let after = Maglev::new(&all, DEFAULT_SIZE).unwrap();
        let changed = before
            .entries
            .iter()
            .zip(after.entries.iter())
            .filter(|(b, a)| b != a)
            .count();
        let share = DEFAULT_SIZE / 11;
        assert!(
            changed >= share && changed < share + DEFAULT_SIZE / 50,
            "{changed} entries changed for a share of {share}"
        );
    }

    #[test]
    fn same_backends_same_table_and_picks_cover_them() {
        let a = Maglev::new(&keys(5), 251).unwrap();
        assert_eq!(a, Maglev::new(&keys(5), 251).unwrap());
        let mut seen = [0usize; 5];
        for h in 0..10_000u32 {
            seen[a.pick(h.wrapping_mul(0x9e37_79b9)).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 1500), "{seen:?}");
        assert_eq!(a.pick(0).map(|i| i < 5), Some(true));
        assert_eq!(a.pick(u32::MAX).map(|i| i < 5), Some(true));
    }

    #[test]
    fn bad_sizes_and_no_backends() {
        assert_eq!(
            Maglev::new(&keys(2), 1000),
            Err(MaglevError::SizeNotPrime(1000))
        );
        assert_eq!(
            Maglev::new(&keys(4), 3),
            Err(MaglevError::TooManyBackends(4))
        );
        let empty = Maglev::new(&[], 7).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.pick(42), None);
    }
}
