//! Folding eval-mode BatchNorm into the preceding convolution.

/// Folds an eval-mode BatchNorm that follows a bias-free convolution into the convolution.
///
/// BatchNorm computes `y = (x − mean) / sqrt(var + eps) · gamma + beta` per output channel.
/// With `scale = gamma / sqrt(var + eps)` this is `y = scale·x + (beta − mean·scale)`, so each
/// output channel's weights (`weight` is `[cout, …]`, `weight.len() / cout` values per
/// channel) are multiplied by `scale` in place, and the returned vector is the bias
/// `beta − mean·scale` to pass to [`Conv2d::new`](super::Conv2d::new).
///
/// # Panics
///
/// If `cout == 0`, `weight.len()` is not a multiple of `cout`, or one of `gamma`, `beta`,
/// `mean`, `var` does not have `cout` entries.
pub fn fold_batchnorm(
    weight: &mut [f32],
    cout: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Vec<f32> {
    assert!(
        cout > 0 && weight.len().is_multiple_of(cout),
        "fold_batchnorm: weight length {} is not a multiple of cout = {cout}",
        weight.len()
    );
    assert!(
        gamma.len() == cout && beta.len() == cout && mean.len() == cout && var.len() == cout,
        "fold_batchnorm: gamma/beta/mean/var must each have cout = {cout} entries"
    );
    let per = weight.len() / cout;
    (0..cout)
        .map(|c| {
            // Computed in f64 so the fold adds no rounding beyond the final f32 conversion.
            let scale = f64::from(gamma[c]) / (f64::from(var[c]) + f64::from(eps)).sqrt();
            for v in &mut weight[c * per..(c + 1) * per] {
                *v = (f64::from(*v) * scale) as f32;
            }
            (f64::from(beta[c]) - f64::from(mean[c]) * scale) as f32
        })
        .collect()
}
