//! The `CAP` best `(key, row)` pairs of a pass, in the total order used for every argmax:
//! larger key first, then lower row index.

/// Capacity of a [`TopK`]: the candidate list of the batched traversal plus one entry, the best
/// row outside the list (the threshold).
pub(super) const CAP: usize = 129;

/// `p` comes before `q`: larger key, then lower index. On finite keys (or `±∞`, never NaN)
/// this is a strict total order on distinct indices.
#[inline(always)]
pub(super) fn beats(p: (f32, usize), q: (f32, usize)) -> bool {
    p.0 > q.0 || (p.0 == q.0 && p.1 < q.1)
}

/// The best up to [`CAP`] pairs offered, sorted best first. Fixed size, no allocation.
#[derive(Clone, Copy)]
pub(super) struct TopK {
    len: usize,
    key: [f32; CAP],
    row: [usize; CAP],
}

impl TopK {
    /// An empty list.
    pub(super) fn new() -> Self {
        TopK {
            len: 0,
            key: [0.0; CAP],
            row: [0; CAP],
        }
    }

    /// Number of pairs held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The `i`-th best pair.
    pub(super) fn get(&self, i: usize) -> (f32, usize) {
        (self.key[i], self.row[i])
    }

    /// Offers a pair (each row at most once). Used by the tests as the simplest reference.
    #[cfg(test)]
    pub(super) fn offer(&mut self, key: f32, row: usize) {
        let mut pos = if self.len == CAP {
            if !beats((key, row), (self.key[CAP - 1], self.row[CAP - 1])) {
                return;
            }
            CAP - 1
        } else {
            self.len += 1;
            self.len - 1
        };
        while pos > 0 && beats((key, row), (self.key[pos - 1], self.row[pos - 1])) {
            self.key[pos] = self.key[pos - 1];
            self.row[pos] = self.row[pos - 1];
            pos -= 1;
        }
        self.key[pos] = key;
        self.row[pos] = row;
    }

    /// The best [`CAP`] of the pairs `(keys[i], base + i)` (at most `MAX_ROWS` keys). Selects
    /// on a stack buffer and sorts only the winners: linear in the number of keys, whatever
    /// their order.
    pub(super) fn of_keys<const MAX_ROWS: usize>(keys: &[f32], base: usize) -> TopK {
        const { assert!(MAX_ROWS <= u32::MAX as usize) };
        let n = keys.len().min(MAX_ROWS);
        // Each pair packed in one integer that orders like `beats`: the key's bits mapped to an
        // unsigned order (`+ 0.0` turns −0 into +0, which `beats` treats as equal keys) above
        // the complemented position (lower position first). Keys are never NaN.
        let pack = |i: usize| -> u64 {
            let bits = (keys[i] + 0.0).to_bits();
            let ord = if bits >> 31 == 1 {
                !bits
            } else {
                bits | 1 << 31
            };
            (u64::from(ord) << 32) | u64::from(u32::MAX - i as u32)
        };
        let mut buf: [u64; MAX_ROWS] = std::array::from_fn(|i| if i < n { pack(i) } else { 0 });
        let buf = &mut buf[..n];
        let take = n.min(CAP);
        if n > take {
            buf.select_nth_unstable_by(take - 1, |p, q| q.cmp(p));
        }
        buf[..take].sort_unstable_by(|p, q| q.cmp(p));
        let mut out = TopK::new();
        for (t, &p) in buf[..take].iter().enumerate() {
            let i = (u32::MAX - p as u32) as usize;
            out.key[t] = keys[i];
            out.row[t] = base + i;
        }
        out.len = take;
        out
    }

    /// The best [`CAP`] pairs of two lists over disjoint rows. The result does not depend on
    /// the order of the arguments, so a parallel reduction gives the same list on any number of
    /// threads.
    pub(super) fn merge(a: TopK, b: TopK) -> TopK {
        let mut out = TopK::new();
        let (mut i, mut j) = (0, 0);
        while out.len < CAP && (i < a.len || j < b.len) {
            let take_a = j == b.len || (i < a.len && beats(a.get(i), b.get(j)));
            let (k, r) = if take_a {
                i += 1;
                a.get(i - 1)
            } else {
                j += 1;
                b.get(j - 1)
            };
            out.key[out.len] = k;
            out.row[out.len] = r;
            out.len += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn beats_prefers_larger_then_lower_index() {
        assert!(beats((2.0, 9), (1.0, 5)));
        assert!(beats((2.0, 3), (2.0, 5)));
        assert!(!beats((2.0, 5), (2.0, 3)));
        assert!(beats((-1.0, 0), (f32::NEG_INFINITY, usize::MAX)));
    }

    #[test]
    fn offer_and_merge_equal_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [0usize, 1, 5, CAP - 1, CAP, CAP + 1, 1000] {
            // Few distinct keys: many ties, decided by the index.
            let keys: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..10) {
                    7 => f32::INFINITY,
                    8 => -1.0,
                    9 => -0.0,
                    v => v as f32,
                })
                .collect();
            let mut want: Vec<(f32, usize)> = keys.iter().copied().zip(0..n).collect();
            // Keys compare as numbers (−0 == +0, as in `beats`), ties by index.
            want.sort_by(|p, q| q.0.partial_cmp(&p.0).unwrap().then(p.1.cmp(&q.1)));
            want.truncate(CAP);
            let split = n / 3;
            let (mut a, mut b, mut all) = (TopK::new(), TopK::new(), TopK::new());
            for (i, &k) in keys.iter().enumerate() {
                all.offer(k, i);
                if i < split {
                    a.offer(k, i)
                } else {
                    b.offer(k, i)
                }
            }
            let sel = TopK::of_keys::<1000>(&keys[split..], split);
            let mut lo = TopK::new();
            for (i, &k) in keys[..split].iter().enumerate() {
                lo.offer(k, i);
            }
            for list in [
                all,
                TopK::merge(a, b),
                TopK::merge(b, a),
                TopK::merge(sel, lo),
            ] {
                let got: Vec<(f32, usize)> = (0..list.len()).map(|i| list.get(i)).collect();
                assert_eq!(got, want, "n {n}");
            }
        }
    }
}
