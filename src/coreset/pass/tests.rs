//! Tests of the pruned passes: dispatched kernels against the portable ones, thresholds.
use super::*;
use crate::kernels::distance::dist;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn sq_threshold_decides_like_the_square_root() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let mut keys: Vec<f32> = vec![
        f32::MIN_POSITIVE,
        1e-45,
        1e-30,
        1.0,
        2.0,
        3.0,
        1e19,
        f32::MAX.sqrt(),
    ];
    keys.extend((0..20_000).map(|_| rng.random_range(1e-3f32..100.0)));
    keys.extend((0..2_000).map(|i| ((i % 97) as f32).sqrt().max(1e-3)));
    for key in keys {
        let t = sq_threshold(key);
        // Around the threshold and around key², every float decides like the definition.
        let centre = [t, key * key];
        for c in centre {
            let bits = c.to_bits();
            for b in bits.saturating_sub(4)..=bits.saturating_add(4).min(f32::MAX.to_bits()) {
                let sq = f32::from_bits(b);
                assert_eq!(sq < t, sq.sqrt() < key, "key {key:e}, sq {sq:e}");
            }
        }
    }
    assert_eq!(sq_threshold(f32::INFINITY), f32::INFINITY);
    assert!(f32::MAX < sq_threshold(f32::INFINITY));
}

fn keys<'k>(a: &'k mut [f32], owner: &'k mut [u32], sq: &'k mut [f32]) -> Keys<'k> {
    Keys { a, owner, sq }
}

#[test]
fn lowered_distances_never_exceed_the_distance() {
    for v in [
        0.0f32,
        1e-30,
        0.3,
        1.0,
        1.0 + f32::EPSILON,
        3.7e5,
        f32::MAX,
        f32::INFINITY,
    ] {
        let w = widen(lower(v));
        assert!(w <= v, "{v}");
        assert_eq!(w.to_bits(), v.to_bits() & 0xffff_0000);
    }
    assert!(widen(lower(f32::NAN)).is_nan());
    // A NaN whose payload is only in the low bits must not become ∞.
    assert!(widen(lower(f32::from_bits(0x7f80_0001))).is_nan());
}

#[test]
fn dispatched_kernels_equal_portable_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for d in [1usize, 7, 16, 33, 128] {
        let n = 300;
        let data: Vec<f32> = (0..n * d).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let z = Rows { data: &data, n, d };
        let m = 7;
        let centres: Vec<f32> = (0..m).flat_map(|j| z.row(j * 13).to_vec()).collect();
        let emitted: Vec<usize> = (0..m).map(|j| j * 13).collect();
        let mut cc = vec![0u16; m * m];
        let mut near = vec![0.0; m];
        centre_table(&z, &emitted, &centres, m, &mut cc, &mut near);
        for q in 0..m {
            for j in 0..m {
                let want = dist(z.row(emitted[q]), &centres[j * d..(j + 1) * d]);
                // The stored value is the distance rounded down to its 16 high bits: never
                // above it, and within one bfloat16 step of it.
                let got = widen(cc[q * m + j]);
                assert_eq!(got.to_bits(), want.to_bits() & 0xffff_0000);
                assert!(
                    got <= want && want - got <= want * (1.0 / 128.0),
                    "{got} {want}"
                );
            }
            let min = (0..m)
                .map(|j| dist(z.row(emitted[q]), &centres[j * d..(j + 1) * d]))
                .fold(f32::INFINITY, f32::min);
            assert_eq!(near[q], min);
        }
        let batch = Batch {
            centres: &centres,
            m,
            first_pos: 0,
            cc: None,
            rel: rel_margin(d),
        };
        let init: Vec<f32> = (0..n)
            .map(|i| if i % 5 == 0 { 0.0 } else { f32::INFINITY })
            .collect();
        let (mut a1, mut o1) = (init.clone(), vec![NO_OWNER; n]);
        let (mut a2, mut o2) = (init.clone(), vec![NO_OWNER; n]);
        let blocked = Blocked::from_rows(&z);
        let mut s1: Vec<f32> = init.iter().map(|&k| key_sq(k)).collect();
        let mut s2 = s1.clone();
        let (t1, w1) = fold_block(
            (&blocked.data, None),
            d,
            0,
            keys(&mut a1, &mut o1, &mut s1),
            &batch,
        );
        let (t2, w2) = fold_block_body(
            (PortableBlocks, Portable),
            (&blocked.data, Some(&data[..])),
            d,
            0,
            keys(&mut a2, &mut o2, &mut s2),
            &batch,
        );
        assert_eq!(s1, s2);
        assert!(a1.iter().zip(&s1).all(|(&a, &s)| key_sq(a) == s));
        assert_eq!(w1, w2);
        assert_eq!(o1, o2);
        let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a1), bits(&a2));
        for (i, got) in a1.iter().enumerate() {
            let want = if i % 5 == 0 {
                0.0
            } else {
                (0..m)
                    .map(|j| dist(z.row(i), &centres[j * d..(j + 1) * d]))
                    .fold(f32::INFINITY, f32::min)
            };
            assert_eq!(got.to_bits(), want.to_bits(), "d {d} row {i}");
        }
        assert_eq!(t1.len(), t2.len());
        for i in 0..t1.len() {
            assert_eq!(t1.get(i).1, t2.get(i).1);
        }
        // The AVX + FMA loops (the choice on CPUs without AVX-512).
        #[cfg(target_arch = "x86_64")]
        if let Some(f) = Fma::detect() {
            let (mut a3, mut o3) = (init.clone(), vec![NO_OWNER; n]);
            let mut s3: Vec<f32> = init.iter().map(|&k| key_sq(k)).collect();
            let (_, w3) = f.run(|| {
                let k3 = keys(&mut a3, &mut o3, &mut s3);
                fold_block_body((FmaBlocks(f), f), (&blocked.data, None), d, 0, k3, &batch)
            });
            assert_eq!(w3, w1);
            assert_eq!(o3, o1);
            assert_eq!(bits(&a3), bits(&a1));
            assert_eq!(s3, s1);
        }
    }
}
