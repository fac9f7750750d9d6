//! Scratch profile of k-NN building blocks at 784 queries × 1024 dims vs a 1,638-row bank.
//! Variants run round-robin (robust on a shared machine); prints min and median per variant.
//! `cargo bench --bench knn_profile`

use patchcore::kernels::gemm::{gemm, matmul_bt, matmul_bt_seq, Backend, MatRef, Parallelism};
use patchcore::knn::{BruteForce, NearestNeighbours};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

type Variant<'a> = (String, Box<dyn Fn() + 'a>);

fn main() {
    let d = 1024;
    let nq = 784;
    let n = 1638;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let q: Vec<f32> = (0..nq * d).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let b: Vec<f32> = (0..n * d).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let bt: Vec<f32> = transpose(&b, n, d);
    let (q, b, bt) = (&q, &b, &bt);
    let qa = ndarray::Array2::from_shape_vec((nq, d), q.clone()).expect("shape");
    let index = BruteForce::new(ndarray::Array2::from_shape_vec((n, d), b.clone()).expect("shape"))
        .expect("bank");
    let (qa, index) = (&qa, &index);
    let mut v: Vec<Variant> = Vec::new();
    v.push((
        "BruteForce::k_nearest k=1".into(),
        Box::new(move || {
            black_box(index.k_nearest(qa.view(), 1).expect("knn"));
        }),
    ));
    v.push((
        "par q as m".into(),
        Box::new(move || {
            let mut o = vec![0.0f32; nq * n];
            matmul_bt(nq, n, d, q, b, &mut o, false);
            black_box(&o);
        }),
    ));
    v.push((
        "par bank as m".into(),
        Box::new(move || {
            let mut o = vec![0.0f32; nq * n];
            matmul_bt(n, nq, d, b, q, &mut o, false);
            black_box(&o);
        }),
    ));
    v.push((
        "par q as m, bank pre-transposed".into(),
        Box::new(move || {
            let mut o = vec![0.0f32; nq * n];
            gemm(
                MatRef::row_major(q, nq, d),
                MatRef::row_major(bt, d, n),
                &mut o,
                n,
                false,
                Parallelism::Rayon,
                Backend::Default,
            );
            black_box(&o);
        }),
    ));
    v.push((
        "par bank as m, q transposed per call".into(),
        Box::new(move || {
            let qt = transpose(q, nq, d);
            let mut o = vec![0.0f32; nq * n];
            gemm(
                MatRef::row_major(b, n, d),
                MatRef::row_major(&qt, d, nq),
                &mut o,
                nq,
                false,
                Parallelism::Rayon,
                Backend::Default,
            );
            black_box(&o);
        }),
    ));
    v.push((
        "par q col-major as m, bank pre-transposed".into(),
        Box::new(move || {
            let qt = transpose(q, nq, d);
            let mut o = vec![0.0f32; nq * n];
            gemm(
                MatRef::row_major(&qt, d, nq).t(),
                MatRef::row_major(bt, d, n),
                &mut o,
                n,
                false,
                Parallelism::Rayon,
                Backend::Default,
            );
            black_box(&o);
        }),
    ));
    for bb in [256usize, 512] {
        v.push((
            format!("seq bank tiles {bb} as n"),
            Box::new(move || {
                b.par_chunks(bb * d).for_each(|bc| {
                    let m = bc.len() / d;
                    let mut o = vec![0.0f32; m * nq];
                    matmul_bt_seq(nq, m, d, q, bc, &mut o, false);
                    black_box(&o);
                })
            }),
        ));
        v.push((
            format!("seq bank tiles {bb} as m"),
            Box::new(move || {
                b.par_chunks(bb * d).for_each(|bc| {
                    let m = bc.len() / d;
                    let mut o = vec![0.0f32; m * nq];
                    matmul_bt_seq(m, nq, d, bc, q, &mut o, false);
                    black_box(&o);
                })
            }),
        ));
    }
    for qb in [64usize, 128] {
        v.push((
            format!("seq query tiles {qb} as m"),
            Box::new(move || {
                q.par_chunks(qb * d).for_each(|qc| {
                    let m = qc.len() / d;
                    let mut o = vec![0.0f32; m * n];
                    matmul_bt_seq(m, n, d, qc, b, &mut o, false);
                    black_box(&o);
                })
            }),
        ));
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let mut times = vec![Vec::new(); v.len()];
    for _ in 0..rounds {
        for (t, (_, f)) in times.iter_mut().zip(&v) {
            let s = Instant::now();
            f();
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    for (mut t, (name, _)) in times.into_iter().zip(&v) {
        t.sort_by(f64::total_cmp);
        println!(
            "{name:32} min {:7.2} ms  median {:7.2} ms",
            t[0],
            t[t.len() / 2]
        );
    }
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}
