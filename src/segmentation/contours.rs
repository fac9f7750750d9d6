//! Sub-pixel contours by marching squares.

use ndarray::ArrayView2;

/// A contour line of a mask or map.
#[derive(Debug, Clone, PartialEq)]
pub struct Contour {
    /// Vertices `(x, y)` in pixel coordinates (pixel `[y, x]` has its centre at `(x, y)`).
    /// For a closed contour the first vertex is **not** repeated at the end.
    pub points: Vec<(f32, f32)>,
    /// `true` when the last vertex connects back to the first. Always `true` for
    /// [`contours`] and [`contours_at`], which treat the outside of the image as background.
    pub closed: bool,
    /// Enclosed area in square pixels (shoelace formula, absolute value).
    pub area: f64,
    /// `true` for the boundary of a hole (background enclosed by foreground). Outer
    /// boundaries run clockwise on screen (x right, y down; positive shoelace area in `(x,
    /// y)`), holes counter-clockwise: the foreground is always on the right-hand side.
    pub is_hole: bool,
}

impl Contour {
    /// The signed shoelace area: positive for outer boundaries, negative for holes.
    pub fn signed_area(&self) -> f64 {
        if self.is_hole {
            -self.area
        } else {
            self.area
        }
    }
}

/// Sub-pixel contours of a binary mask: marching squares on the 0/1 field at level 0.5, with
/// the image surrounded by a one-pixel border of background so that every contour is closed
/// (like scikit-image's `find_contours` on a zero-padded image).
///
/// Vertices lie halfway between a foreground pixel centre and a neighbouring background pixel
/// centre. Consequences worth knowing:
/// - a single pixel gives a diamond of area 0.5; a `k×k` square gives its `k×k` pixel square
///   with the four corners cut by half-pixel triangles: area `k² − 0.5`;
/// - ambiguous (saddle) cells — two diagonal foreground pixels with two diagonal background
///   pixels — are resolved so that **the foreground is 8-connected** (and the background
///   4-connected): two diagonally touching pixels give one contour (area 1.5), matching
///   [`Connectivity::Eight`](super::Connectivity::Eight); each 8-connected region has exactly
///   one outer contour, and each 4-connected background component not touching the image
///   border gives one hole contour.
///
/// Orientation: see [`Contour::is_hole`]. Contours are returned in raster order of their first
/// vertex. Cost is linear in the pixels plus `O(b log b)` in the boundary length `b`.
pub fn contours(mask: ArrayView2<'_, bool>) -> Vec<Contour> {
    march(mask.dim(), |y, x| mask[[y, x]], |_, _, _, _| 0.5)
}

/// Sub-pixel iso-contours of a float map at `level`: marching squares with foreground =
/// `value >= level` (the pixels [`threshold_map`](super::threshold_map) selects), crossing
/// points placed by linear interpolation along each cell edge.
///
/// Same conventions as [`contours`]: the outside of the image counts as below `level` (a
/// crossing with the outside lies half a pixel beyond the border pixel), saddles keep the
/// foreground 8-connected, every contour is closed, outer boundaries clockwise on screen.
/// NaN values count as below `level`.
pub fn contours_at(map: ArrayView2<'_, f32>, level: f32) -> Vec<Contour> {
    let lv = f64::from(level);
    march(
        map.dim(),
        |y, x| map[[y, x]] >= level,
        |y0, x0, y1, x1| {
            let (a, b) = (f64::from(map[[y0, x0]]), f64::from(map[[y1, x1]]));
            let t = (lv - a) / (b - a);
            if t.is_finite() {
                t.clamp(0.0, 1.0)
            } else {
                0.5
            }
        },
    )
}

// Cell edges (in the padded grid of (h+2)×(w+2) vertices) are identified by
// `2·(r·wp + c) + kind`: kind 0 = horizontal edge from vertex (r, c) to (r, c+1),
// kind 1 = vertical edge from (r, c) to (r+1, c).

/// Marching squares on an `h×w` grid padded with background. `fg(y, x)` (image coordinates)
/// tells foreground; `frac(y0, x0, y1, x1)` is the crossing position (0 at the first vertex,
/// 1 at the second) on an edge between two image pixels of different class.
fn march(
    (h, w): (usize, usize),
    fg: impl Fn(usize, usize) -> bool,
    frac: impl Fn(usize, usize, usize, usize) -> f64,
) -> Vec<Contour> {
    if h == 0 || w == 0 {
        return Vec::new();
    }
    let (hp, wp) = (h + 2, w + 2);
    let is_fg = |r: usize, c: usize| r >= 1 && c >= 1 && r <= h && c <= w && fg(r - 1, c - 1);
    let hid = |r: usize, c: usize| 2 * (r as u64 * wp as u64 + c as u64);
    let vid = |r: usize, c: usize| 2 * (r as u64 * wp as u64 + c as u64) + 1;

    // Directed segments (from edge, to edge), foreground on the right.
    let mut segs: Vec<(u64, u64)> = Vec::new();
    // Foreground flags of the previous and current vertex rows (avoid re-evaluating `fg`).
    let mut top: Vec<bool> = (0..wp).map(|c| is_fg(0, c)).collect();
    let mut bot: Vec<bool> = vec![false; wp];
    for r in 0..hp - 1 {
        for (c, b) in bot.iter_mut().enumerate() {
            *b = is_fg(r + 1, c);
        }
        for c in 0..wp - 1 {
            let case = (top[c] as u8) << 3
                | (top[c + 1] as u8) << 2
                | (bot[c + 1] as u8) << 1
                | bot[c] as u8;
            if case == 0 || case == 15 {
                continue;
            }
            let t = hid(r, c);
            let b = hid(r + 1, c);
            let l = vid(r, c);
            let rr = vid(r, c + 1);
            match case {
                0b1000 => segs.push((t, l)),
                0b0100 => segs.push((rr, t)),
                0b0010 => segs.push((b, rr)),
                0b0001 => segs.push((l, b)),
                0b0111 => segs.push((l, t)),
                0b1011 => segs.push((t, rr)),
                0b1101 => segs.push((rr, b)),
                0b1110 => segs.push((b, l)),
                0b1100 => segs.push((rr, l)),
                0b0110 => segs.push((b, t)),
                0b0011 => segs.push((l, rr)),
                0b1001 => segs.push((t, b)),
                // Saddles: cut off each background corner, so the two foreground corners
                // stay connected through the cell (8-connected foreground).
                0b1010 => {
                    segs.push((t, rr));
                    segs.push((b, l));
                }
                0b0101 => {
                    segs.push((l, t));
                    segs.push((rr, b));
                }
                _ => {}
            }
        }
        std::mem::swap(&mut top, &mut bot);
    }
    if segs.is_empty() {
        return Vec::new();
    }
    segs.sort_unstable();

    let point = |id: u64| -> (f32, f32) {
        let kind = id & 1;
        let v = (id >> 1) as usize;
        let (r, c) = (v / wp, v % wp);
        if kind == 0 {
            // Horizontal edge (r, c)–(r, c+1): r is interior here (padding rows are all
            // background, so no horizontal crossing lies on them).
            let t = if c == 0 || c + 1 > w {
                0.5
            } else {
                frac(r - 1, c - 1, r - 1, c)
            };
            ((c as f64 + t - 1.0) as f32, (r as f64 - 1.0) as f32)
        } else {
            let t = if r == 0 || r + 1 > h {
                0.5
            } else {
                frac(r - 1, c - 1, r, c - 1)
            };
            ((c as f64 - 1.0) as f32, (r as f64 + t - 1.0) as f32)
        }
    };

    let mut used = vec![false; segs.len()];
    let mut out = Vec::new();
    for start in 0..segs.len() {
        if used[start] {
            continue;
        }
        let mut pts = Vec::new();
        let mut i = start;
        let mut closed = false;
        loop {
            used[i] = true;
            pts.push(point(segs[i].0));
            let to = segs[i].1;
            match segs.binary_search_by(|s| s.0.cmp(&to)) {
                Ok(j) if j == start => {
                    closed = true;
                    break;
                }
                Ok(j) if !used[j] => i = j,
                // Cannot happen for a padded grid (every crossing has one incoming and one
                // outgoing segment); stop rather than loop.
                _ => break,
            }
        }
        let signed = shoelace(&pts);
        out.push(Contour {
            points: pts,
            closed,
            area: signed.abs(),
            is_hole: signed < 0.0,
        });
    }
    out
}

/// Signed shoelace area of a closed polygon in `(x, y)`, accumulated in `f64`.
fn shoelace(pts: &[(f32, f32)]) -> f64 {
    let n = pts.len();
    let mut s = 0.0f64;
    for i in 0..n {
        let (x0, y0) = pts[i];
        let (x1, y1) = pts[(i + 1) % n];
        s += f64::from(x0) * f64::from(y1) - f64::from(x1) * f64::from(y0);
    }
    0.5 * s
}
