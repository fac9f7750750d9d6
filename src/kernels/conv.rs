//! 2-D convolution with BatchNorm folded into the weights, computed as GEMM.
//!
//! STUB (to be replaced by the kernels work): a naive direct convolution with the final API.

/// A convolution whose weights (and folded BatchNorm bias) are fixed at load time.
///
/// `weight` is `[cout, cin, kh, kw]` row-major (PyTorch layout); `bias` has `cout` entries.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub cout: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv2d {
    /// Build from PyTorch-layout weights `[cout, cin, kh, kw]` and a bias of length `cout`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pad: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        assert_eq!(weight.len(), cout * cin * kh * kw);
        assert_eq!(bias.len(), cout);
        assert!(stride >= 1);
        Conv2d {
            cout,
            cin,
            kh,
            kw,
            stride,
            pad,
            weight,
            bias,
        }
    }

    /// Output spatial size for an `h × w` input.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.kh) / self.stride + 1,
            (w + 2 * self.pad - self.kw) / self.stride + 1,
        )
    }

    /// One image: `input` is `[cin, h, w]`, `out` is `[cout, oh, ow]`.
    /// Computes `out = act(conv(input) + bias (+ residual))`, where `act` is ReLU when `relu`.
    /// `scratch` is reused between calls to avoid allocation.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_image(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
        relu: bool,
        _scratch: &mut Vec<f32>,
    ) {
        let (oh, ow) = self.out_hw(h, w);
        assert_eq!(input.len(), self.cin * h * w);
        assert_eq!(out.len(), self.cout * oh * ow);
        for co in 0..self.cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = self.bias[co];
                    for ci in 0..self.cin {
                        for ky in 0..self.kh {
                            let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..self.kw {
                                let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                acc += self.weight
                                    [((co * self.cin + ci) * self.kh + ky) * self.kw + kx]
                                    * input[(ci * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                    let idx = (co * oh + oy) * ow + ox;
                    if let Some(r) = residual {
                        acc += r[idx];
                    }
                    if relu && acc < 0.0 {
                        acc = 0.0;
                    }
                    out[idx] = acc;
                }
            }
        }
    }
}
