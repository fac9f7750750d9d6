//! Turning an anomaly map into defect regions: thresholding, connected components and
//! sub-pixel contours.
//!
//! Coordinates: arrays are indexed `[row, col]` = `[y, x]`; pixel `(y, x)` has its centre at
//! the point `(x, y)`. Regions report `(y, x)`-ordered boxes and centroids (like the array
//! index); contour points are `(x, y)` (like drawing APIs).

mod contours;

pub use contours::{contours, contours_at, Contour};

use crate::Result;
use ndarray::{Array2, ArrayView2};

/// The binary defect mask of `map`: `true` where `map >= t` (NaN is never `>= t`).
pub fn threshold_map(map: ArrayView2<'_, f32>, t: f32) -> Array2<bool> {
    map.mapv(|v| v >= t)
}

/// Which neighbours make two foreground pixels part of the same region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connectivity {
    /// The 8 surrounding pixels (edges and corners). Default, as in the MVTec AD / AUPRO
    /// evaluation (scipy `label` with a 3×3 structure of ones).
    #[default]
    Eight,
    /// Only the 4 edge neighbours (up, down, left, right).
    Four,
}

/// An axis-aligned bounding box, **half-open**: rows `y0..y1`, columns `x0..x1` (so
/// `y1 − y0` is the height, like a Rust range or a numpy slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BBox {
    /// First row.
    pub y0: usize,
    /// First column.
    pub x0: usize,
    /// One past the last row.
    pub y1: usize,
    /// One past the last column.
    pub x1: usize,
}

impl BBox {
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }
    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }
}

/// One connected region of a mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// The region's value in [`Components::labels`] (`1..=n`, in raster order of the region's
    /// first pixel).
    pub label: u32,
    /// Number of pixels.
    pub area: usize,
    /// Bounding box (half-open).
    pub bbox: BBox,
    /// Mean pixel position `(y, x)`.
    pub centroid: (f64, f64),
    /// Largest anomaly score inside the region, when computed with
    /// [`connected_components_with_scores`] (NaN values ignored); `None` otherwise.
    pub max_score: Option<f32>,
}

/// Connected components of a mask: a label image and one [`Region`] per label.
#[derive(Debug, Clone, PartialEq)]
pub struct Components {
    /// Same shape as the mask: 0 for background, `k` for pixels of `regions[k − 1]`.
    pub labels: Array2<u32>,
    /// The regions, ordered by label.
    pub regions: Vec<Region>,
}

/// Labels the connected regions of `mask` (foreground = `true`).
///
/// Labels are assigned in raster order of each region's first pixel (the order scipy's
/// `ndimage.label` produces). Linear time; the flood fill uses an explicit stack, so no
/// recursion depth limit.
pub fn connected_components(mask: ArrayView2<'_, bool>, connectivity: Connectivity) -> Components {
    label_impl(mask, connectivity, None)
}

/// [`connected_components`], additionally filling [`Region::max_score`] from `map`.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) when `map` and `mask` differ in shape.
pub fn connected_components_with_scores(
    mask: ArrayView2<'_, bool>,
    map: ArrayView2<'_, f32>,
    connectivity: Connectivity,
) -> Result<Components> {
    if mask.dim() != map.dim() {
        return Err(crate::Error::input(format!(
            "mask is {:?} but anomaly map is {:?}; they must have the same shape",
            mask.dim(),
            map.dim()
        )));
    }
    Ok(label_impl(mask, connectivity, Some(map)))
}

fn label_impl(
    mask: ArrayView2<'_, bool>,
    connectivity: Connectivity,
    map: Option<ArrayView2<'_, f32>>,
) -> Components {
    let (h, w) = mask.dim();
    let mut labels = Array2::<u32>::zeros((h, w));
    let mut regions = Vec::new();
    let mut stack: Vec<(usize, usize)> = Vec::new();
    const N4: [(isize, isize); 4] = [(-1, 0), (1, 0), (0, -1), (0, 1)];
    const N8: [(isize, isize); 8] = [
        (-1, -1),
        (-1, 0),
        (-1, 1),
        (0, -1),
        (0, 1),
        (1, -1),
        (1, 0),
        (1, 1),
    ];
    let nbrs: &[(isize, isize)] = match connectivity {
        Connectivity::Eight => &N8,
        Connectivity::Four => &N4,
    };
    for y in 0..h {
        for x in 0..w {
            if !mask[[y, x]] || labels[[y, x]] != 0 {
                continue;
            }
            let label = regions.len() as u32 + 1;
            labels[[y, x]] = label;
            stack.push((y, x));
            let (mut area, mut sy, mut sx) = (0usize, 0f64, 0f64);
            let mut bbox = BBox {
                y0: y,
                x0: x,
                y1: y + 1,
                x1: x + 1,
            };
            let mut max_score: Option<f32> = None;
            while let Some((cy, cx)) = stack.pop() {
                area += 1;
                sy += cy as f64;
                sx += cx as f64;
                bbox.y0 = bbox.y0.min(cy);
                bbox.x0 = bbox.x0.min(cx);
                bbox.y1 = bbox.y1.max(cy + 1);
                bbox.x1 = bbox.x1.max(cx + 1);
                if let Some(m) = &map {
                    let v = m[[cy, cx]];
                    // `f32::max` ignores NaN unless every value is NaN.
                    max_score = Some(max_score.map_or(v, |b| b.max(v)));
                }
                for &(dy, dx) in nbrs {
                    let (ny, nx) = (cy as isize + dy, cx as isize + dx);
                    if ny < 0 || nx < 0 || ny as usize >= h || nx as usize >= w {
                        continue;
                    }
                    let (ny, nx) = (ny as usize, nx as usize);
                    if mask[[ny, nx]] && labels[[ny, nx]] == 0 {
                        labels[[ny, nx]] = label;
                        stack.push((ny, nx));
                    }
                }
            }
            regions.push(Region {
                label,
                area,
                bbox,
                centroid: (sy / area as f64, sx / area as f64),
                max_score,
            });
        }
    }
    Components { labels, regions }
}
