//! Property tests: the sort-based metrics against brute-force references written here.

use ndarray::Array2;
use patchcore::metrics::{aupro, auroc, f1_max, pixel_auroc, AuproConfig, AuproVariant};
use proptest::prelude::*;

/// Scores from a small set so that ties are frequent.
fn tied_scores(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec((0u8..6).prop_map(|k| f32::from(k) * 0.25), n)
}

fn labelled(max: usize) -> impl Strategy<Value = (Vec<bool>, Vec<f32>)> {
    (2..max).prop_flat_map(|n| (prop::collection::vec(any::<bool>(), n), tied_scores(n)))
}

/// AUROC by counting every (positive, negative) pair.
fn naive_auroc(y: &[bool], s: &[f64]) -> f64 {
    let (mut num, mut pairs) = (0.0f64, 0.0f64);
    for i in 0..y.len() {
        for j in 0..y.len() {
            if y[i] && !y[j] {
                pairs += 1.0;
                if s[i] > s[j] {
                    num += 1.0;
                } else if s[i] == s[j] {
                    num += 0.5;
                }
            }
        }
    }
    num / pairs
}

fn naive_f1_at(y: &[bool], s: &[f64], t: f64) -> f64 {
    let p = y.iter().filter(|&&b| b).count() as f64;
    let tp = y.iter().zip(s).filter(|(&b, &v)| b && v >= t).count() as f64;
    let fp = y.iter().zip(s).filter(|(&b, &v)| !b && v >= t).count() as f64;
    let prec = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
    let rec = tp / p;
    if prec + rec == 0.0 {
        0.0
    } else {
        2.0 * prec * rec / (prec + rec)
    }
}

/// Naive 8-connected labelling by repeated label propagation (deliberately different from the
/// library's flood fill). Returns labels (0 = background) and region sizes.
fn naive_regions(m: &Array2<bool>) -> (Array2<usize>, Vec<usize>) {
    let (h, w) = m.dim();
    let mut lab = Array2::<usize>::zeros((h, w));
    for ((y, x), &b) in m.indexed_iter() {
        if b {
            lab[[y, x]] = y * w + x + 1;
        }
    }
    loop {
        let mut changed = false;
        for y in 0..h {
            for x in 0..w {
                if lab[[y, x]] == 0 {
                    continue;
                }
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                        if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                            continue;
                        }
                        let o = lab[[ny as usize, nx as usize]];
                        if o != 0 && o < lab[[y, x]] {
                            lab[[y, x]] = o;
                            changed = true;
                        }
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut ids: Vec<usize> = lab.iter().copied().filter(|&l| l != 0).collect();
    ids.sort_unstable();
    ids.dedup();
    let sizes = ids
        .iter()
        .map(|&id| lab.iter().filter(|&&l| l == id).count())
        .collect();
    let dense = lab.mapv(|l| {
        if l == 0 {
            0
        } else {
            ids.binary_search(&l).unwrap() + 1
        }
    });
    (dense, sizes)
}

/// The MVTec reference trapezoid: x sorted ascending, interpolate at x_max via bisect.
fn ref_trapezoid(pts: &mut [(f64, f64)], x_max: f64) -> f64 {
    pts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let x: Vec<f64> = pts.iter().map(|p| p.0).collect();
    let y: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let mut correction = 0.0;
    if !x.contains(&x_max) {
        let ins = x.partition_point(|&v| v <= x_max);
        assert!(ins > 0 && ins < x.len());
        let yi = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1]);
        correction = 0.5 * (yi + y[ins - 1]) * (x_max - x[ins - 1]);
    }
    let mut area = 0.0;
    for i in 1..x.len() {
        if x[i] <= x_max {
            area += 0.5 * (y[i] + y[i - 1]) * (x[i] - x[i - 1]);
        }
    }
    (area + correction) / x_max
}

struct Flat {
    normal: Vec<f64>,
    /// (score, region id 0-based)
    defect: Vec<(f64, usize)>,
    sizes: Vec<usize>,
}

fn flatten(masks: &[Array2<bool>], maps: &[Array2<f32>]) -> Flat {
    let mut f = Flat {
        normal: vec![],
        defect: vec![],
        sizes: vec![],
    };
    for (m, a) in masks.iter().zip(maps) {
        let (lab, sizes) = naive_regions(m);
        let base = f.sizes.len();
        f.sizes.extend(sizes);
        for (&l, &s) in lab.iter().zip(a.iter()) {
            if l == 0 {
                f.normal.push(f64::from(s));
            } else {
                f.defect.push((f64::from(s), base + l - 1));
            }
        }
    }
    f
}

fn pro_at(f: &Flat, detected: impl Fn(f64) -> bool) -> f64 {
    let mut hit = vec![0usize; f.sizes.len()];
    for &(s, r) in &f.defect {
        if detected(s) {
            hit[r] += 1;
        }
    }
    hit.iter()
        .zip(&f.sizes)
        .map(|(&h, &n)| h as f64 / n as f64)
        .sum::<f64>()
        / f.sizes.len() as f64
}

/// Direct per-threshold MVTec reference AUPRO.
fn naive_aupro_mvtec(f: &Flat, num_thresholds: Option<usize>, limit: f64) -> f64 {
    let mut normal = f.normal.clone();
    normal.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = normal.len();
    let t = num_thresholds.unwrap_or(n);
    let step = (n - 1) as f64 / (t - 1) as f64;
    let mut pts = vec![(1.0, 1.0)];
    for i in 0..t {
        let pos = if i == t - 1 {
            n - 1
        } else {
            (i as f64 * step) as usize
        };
        let th = normal[pos];
        let fpr = 1.0 - (pos + 1) as f64 / n as f64;
        pts.push((fpr, pro_at(f, |s| s > th)));
    }
    ref_trapezoid(&mut pts, limit)
}

/// Direct exact step-curve AUPRO: every distinct score, positive iff score >= t.
fn naive_aupro_exact(f: &Flat, limit: f64) -> f64 {
    let mut all: Vec<f64> = f
        .normal
        .iter()
        .copied()
        .chain(f.defect.iter().map(|d| d.0))
        .collect();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all.dedup();
    let n = f.normal.len() as f64;
    let mut pts = vec![(0.0, 0.0)];
    for &th in &all {
        let fpr = f.normal.iter().filter(|&&s| s >= th).count() as f64 / n;
        pts.push((fpr, pro_at(f, |s| s >= th)));
    }
    ref_trapezoid(&mut pts, limit)
}

fn images() -> impl Strategy<Value = (Vec<Array2<bool>>, Vec<Array2<f32>>)> {
    prop::collection::vec(
        (1usize..6, 1usize..7).prop_flat_map(|(h, w)| {
            (
                prop::collection::vec(prop::bool::weighted(0.3), h * w),
                tied_scores(h * w),
            )
                .prop_map(move |(m, s)| {
                    (
                        Array2::from_shape_vec((h, w), m).unwrap(),
                        Array2::from_shape_vec((h, w), s).unwrap(),
                    )
                })
        }),
        1..4,
    )
    .prop_map(|v| v.into_iter().unzip())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn auroc_matches_pair_count((y, s) in labelled(40)) {
        let p = y.iter().filter(|&&b| b).count();
        prop_assume!(p > 0 && p < y.len());
        let s64: Vec<f64> = s.iter().map(|&v| f64::from(v)).collect();
        let got = auroc(&y, &s).unwrap();
        prop_assert!((got - naive_auroc(&y, &s64)).abs() < 1e-12);
        prop_assert_eq!(got, auroc(&y, &s64).unwrap());
    }

    #[test]
    fn auroc_invariant_under_monotone_maps((y, s) in labelled(40)) {
        let p = y.iter().filter(|&&b| b).count();
        prop_assume!(p > 0 && p < y.len());
        let s64: Vec<f64> = s.iter().map(|&v| f64::from(v)).collect();
        let base = auroc(&y, &s64).unwrap();
        let affine: Vec<f64> = s64.iter().map(|v| 3.0 * v + 1.0).collect();
        let exp: Vec<f64> = s64.iter().map(|v| v.exp()).collect();
        let neg: Vec<f64> = s64.iter().map(|v| -v).collect();
        prop_assert_eq!(auroc(&y, &affine).unwrap(), base);
        prop_assert_eq!(auroc(&y, &exp).unwrap(), base);
        // Reversing the order mirrors the AUROC.
        prop_assert!((auroc(&y, &neg).unwrap() - (1.0 - base)).abs() < 1e-12);
    }

    #[test]
    fn f1_max_matches_every_threshold((y, s) in labelled(40)) {
        prop_assume!(y.iter().any(|&b| b));
        let s64: Vec<f64> = s.iter().map(|&v| f64::from(v)).collect();
        let best = s64.iter().map(|&t| naive_f1_at(&y, &s64, t)).fold(0.0, f64::max);
        let got = f1_max(&y, &s).unwrap();
        prop_assert!((got.f1 - best).abs() < 1e-12, "{} vs {}", got.f1, best);
        prop_assert!((naive_f1_at(&y, &s64, got.threshold) - best).abs() < 1e-12);
        prop_assert!(s64.contains(&got.threshold));
        // No lower threshold reaches the same F1.
        for &t in &s64 {
            if t < got.threshold {
                prop_assert!(naive_f1_at(&y, &s64, t) < best - 1e-12);
            }
        }
        let p = y.iter().filter(|&&b| b).count() as f64;
        let tp = y.iter().zip(&s64).filter(|(&b, &v)| b && v >= got.threshold).count() as f64;
        prop_assert!((got.recall - tp / p).abs() < 1e-15);
    }

    #[test]
    fn pixel_auroc_matches_flat_auroc((masks, maps) in images()) {
        let y: Vec<bool> = masks.iter().flat_map(|m| m.iter().copied()).collect();
        let s: Vec<f64> = maps.iter().flat_map(|m| m.iter().map(|&v| f64::from(v))).collect();
        let p = y.iter().filter(|&&b| b).count();
        prop_assume!(p > 0 && p < y.len());
        let mv: Vec<_> = masks.iter().map(|m| m.view()).collect();
        let av: Vec<_> = maps.iter().map(|m| m.view()).collect();
        let got = pixel_auroc(&mv, &av).unwrap();
        prop_assert!((got - naive_auroc(&y, &s)).abs() < 1e-12);
    }

    #[test]
    fn aupro_matches_direct_per_threshold(
        (masks, maps) in images(),
        nt in prop::option::of(2usize..25),
        limit in prop::sample::select(vec![0.3f64, 0.05, 0.5, 1.0]),
    ) {
        let f = flatten(&masks, &maps);
        prop_assume!(!f.defect.is_empty() && !f.normal.is_empty());
        let mv: Vec<_> = masks.iter().map(|m| m.view()).collect();
        let av: Vec<_> = maps.iter().map(|m| m.view()).collect();
        let cfg = AuproConfig { fpr_limit: limit, num_thresholds: nt, variant: AuproVariant::MvtecReference };
        let got = aupro(&mv, &av, &cfg).unwrap();
        let want = naive_aupro_mvtec(&f, nt, limit);
        prop_assert!((got - want).abs() < 1e-9, "mvtec {} vs {}", got, want);
        let cfg = AuproConfig { variant: AuproVariant::ExactStep, ..cfg };
        let got = aupro(&mv, &av, &cfg).unwrap();
        let want = naive_aupro_exact(&f, limit);
        prop_assert!((got - want).abs() < 1e-9, "exact {} vs {}", got, want);
        prop_assert!((0.0..=1.0).contains(&got));
    }
}
