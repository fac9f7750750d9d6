//! The crate's one entry point for matrix products.
//!
//! STUB (to be replaced by the kernels work): a plain triple loop.

/// `c[m×n] (+)= a[m×k] · b[k×n]`, all row-major and contiguous.
/// With `accumulate == false`, `c` is overwritten.
pub fn matmul(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if !accumulate {
        c[..m * n].fill(0.0);
    }
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += av * b[p * n + j];
            }
        }
    }
}

/// `c[m×n] (+)= a[m×k] · b[n×k]ᵀ`, all row-major and contiguous (`b` holds `n` rows of
/// length `k`, e.g. a memory bank). With `accumulate == false`, `c` is overwritten.
pub fn matmul_bt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n);
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[i * k + p] * b[j * k + p];
            }
            if accumulate {
                c[i * n + j] += s;
            } else {
                c[i * n + j] = s;
            }
        }
    }
}
