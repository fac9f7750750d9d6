//! The memory plan of a fit: what each stage holds (rows × dims × bytes), the plan chosen
//! under a budget, and the refusal when even the smallest plan does not fit.
//!
//! Two plans:
//! * [`FitPlan::InMemory`]: every patch feature (`N × D`) stays in memory, is projected for the
//!   greedy coreset, and the chosen rows are copied out.
//! * [`FitPlan::Spill`]: only the projection (`N × p`, `p` = `coreset.projection_dim`) stays in
//!   memory; the full rows go to a spill file next to the output and the chosen rows are read
//!   back. The bank is bit for bit the in-memory plan's.

use crate::coreset::{self, Sampler, PROJECTION_BLOCK_ROWS};
use crate::error::{Error, Result};

use super::PatchCoreConfig;

/// How a fit holds the patch features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitPlan {
    /// Every patch feature in memory.
    InMemory,
    /// Only the coreset projection in memory; full rows in a spill file.
    Spill,
}

/// One array a stage of the fit holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageMemory {
    /// The stage (`features`, `coreset`, `gather`).
    pub stage: &'static str,
    /// What the array is.
    pub what: &'static str,
    /// Rows.
    pub rows: usize,
    /// Values per row.
    pub dims: usize,
    /// Bytes per value.
    pub bytes_per_value: usize,
}

impl StageMemory {
    /// `rows × dims × bytes_per_value`.
    pub fn bytes(&self) -> u64 {
        self.rows as u64 * self.dims as u64 * self.bytes_per_value as u64
    }
}

/// What a fit will hold, stage by stage, under one plan.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    /// The plan.
    pub plan: FitPlan,
    /// Training images.
    pub images: usize,
    /// Patch features (rows of the full bank).
    pub rows: usize,
    /// Rows the coreset keeps.
    pub keep: usize,
    /// Values per patch feature.
    pub dim: usize,
    /// Memory held before the fit starts (process resident size: code, backbone weights).
    pub baseline: u64,
    /// Working memory of one feature-extraction batch (backbone activations, embedding),
    /// estimated from the layer shapes.
    pub batch_working: u64,
    /// Memory of the baseline freed before the coreset stage: the spill plan releases the
    /// backbone's caches ([`Backbone::release_caches`](crate::backbone::Backbone::release_caches))
    /// and, when it spills the projection, stashes the backbone's weights in the spill file
    /// ([`Backbone::stash_weights`](crate::backbone::Backbone::stash_weights)).
    pub released: u64,
    /// Of [`MemoryEstimate::released`], what comes back while the gather stage still holds the
    /// memory bank (the stashed weights).
    pub restored: u64,
    /// The arrays of each stage.
    pub stages: Vec<StageMemory>,
}

/// Fixed part of the slack added to every estimate: code, allocator arenas, thread stacks,
/// buffers too small to list (measured: the listed arrays fall 30–100 MiB short of the
/// measured peak of WRN-50-2 fits of 100–2,000 images, BENCHMARKS.md).
pub const SLACK_FIXED: u64 = 64 << 20;

/// Proportional part of the slack, in percent of the largest stage (5 %: the 2,000-image
/// spilled fit's coreset stage measured ~70 MiB above its listed 907 MiB, the 400-image
/// in-memory fit ~100 MiB above its listed ~1.7 GiB; 64 MiB + 5 % covers both).
pub const SLACK_PERCENT: u64 = 5;

/// The three stages, in order.
const STAGES: [&str; 3] = ["features", "coreset", "gather"];

impl MemoryEstimate {
    /// Bytes held by the arrays of `stage`.
    pub fn stage_bytes(&self, stage: &str) -> u64 {
        self.stages
            .iter()
            .filter(|s| s.stage == stage)
            .map(StageMemory::bytes)
            .sum()
    }

    /// The estimated peak: the largest of the stages' totals — baseline (less what was
    /// released, after the feature stage) + the stage's arrays (+ the batch working set during
    /// feature extraction) — plus the slack ([`MemoryEstimate::slack`]).
    pub fn peak(&self) -> u64 {
        let total = STAGES
            .iter()
            .map(|&s| self.stage_total(s))
            .max()
            .unwrap_or(self.baseline);
        total + self.slack()
    }

    /// Baseline + arrays of `stage` (+ the batch working set during feature extraction,
    /// − the released memory after it).
    fn stage_total(&self, stage: &str) -> u64 {
        let held = match stage {
            "features" => self.baseline + self.batch_working,
            "coreset" => self.baseline.saturating_sub(self.released),
            _ => self.baseline.saturating_sub(self.released) + self.restored,
        };
        held + self.stage_bytes(stage)
    }

    /// What the peak adds for what is not listed: [`SLACK_FIXED`] plus [`SLACK_PERCENT`] of
    /// the largest stage.
    pub fn slack(&self) -> u64 {
        Self::slack_of(self.largest_stage())
    }

    fn slack_of(stage: u64) -> u64 {
        SLACK_FIXED + stage / 100 * SLACK_PERCENT
    }

    /// The largest stage (arrays + batch working set during feature extraction).
    fn largest_stage(&self) -> u64 {
        let stage_max = STAGES
            .iter()
            .map(|&s| {
                self.stage_bytes(s)
                    + if s == "features" {
                        self.batch_working
                    } else {
                        0
                    }
            })
            .max()
            .unwrap_or(0);
        stage_max
    }

    /// Human-readable lines: one per stage array, then the peak.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "memory plan {:?}: {} images → {} patch features × {} dims, coreset keeps {}",
            self.plan, self.images, self.rows, self.dim, self.keep
        )];
        out.push(format!(
            "  held at start (code, backbone weights): {}",
            format_bytes(self.baseline)
        ));
        out.push(format!(
            "  features: batch working set ≈ {}",
            format_bytes(self.batch_working)
        ));
        if self.released > 0 {
            out.push(format!(
                "  released before the coreset stage (backbone caches{}): {}",
                if self.restored > 0 {
                    " and weights, stashed in the spill file"
                } else {
                    ""
                },
                format_bytes(self.released)
            ));
        }
        for s in &self.stages {
            out.push(format!(
                "  {}: {} = {} × {} × {} B = {}",
                s.stage,
                s.what,
                s.rows,
                s.dims,
                s.bytes_per_value,
                format_bytes(s.bytes())
            ));
        }
        out.push(format!(
            "  slack (allocator, stacks, small buffers): {}",
            format_bytes(self.slack())
        ));
        out.push(format!("  estimated peak: {}", format_bytes(self.peak())));
        out
    }
}

/// `1536 MiB`-style rendering of a byte count (binary units).
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses a memory size: a number with an optional unit `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`,
/// `G`/`GB`/`GiB` (`K`, `M`, `G` and the `…iB` units are binary, `KB`/`MB`/`GB` decimal);
/// e.g. `1GiB`, `512M`, `1.5GB`, `100000000`.
///
/// # Errors
/// [`Error::InvalidParameter`] (`max_memory`) for anything else, 0 or a value beyond `u64`.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => f64::NAN,
    };
    let v: f64 = num.parse().unwrap_or(f64::NAN) * mult;
    if !(v.is_finite() && v >= 1.0 && v < u64::MAX as f64) {
        return Err(Error::param(
            "max_memory",
            format!("`{s}` is not a memory size; write e.g. `1GiB`, `512MiB` or `2GB`"),
        ));
    }
    Ok(v as u64)
}

/// The resident size of this process now (Linux `/proc/self/status` `VmRSS`), if known.
pub fn resident_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

/// The peak resident size of this process so far (Linux `VmHWM`), if known.
pub fn peak_resident_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

fn proc_status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Everything the plan depends on.
pub(super) struct PlanInput<'a> {
    pub config: &'a PatchCoreConfig,
    pub images: usize,
    pub rows_per_image: usize,
    pub dim: usize,
    pub baseline: u64,
    pub batch_working: u64,
    /// What [`Backbone::release_caches`](crate::backbone::Backbone::release_caches) frees.
    pub released: u64,
    /// What [`Backbone::stash_weights`](crate::backbone::Backbone::stash_weights) frees.
    pub weights: u64,
}

/// The estimate of `plan`.
pub(super) fn estimate(inp: &PlanInput<'_>, plan: FitPlan) -> Result<MemoryEstimate> {
    let p = inp.config.params();
    let rows = inp.images * inp.rows_per_image;
    let keep = match p.coreset.sampler {
        Sampler::None => rows,
        _ => coreset::coreset_size(rows, p.coreset.size)?,
    };
    let greedy = matches!(
        p.coreset.sampler,
        Sampler::Greedy | Sampler::ApproximateGreedy { .. }
    );
    let proj = if coreset::projects(&p.coreset, inp.dim) {
        p.coreset.projection_dim
    } else {
        inp.dim
    };
    let d = inp.dim;
    // The spill plan stashes the weights in the spill file's region after the projection.
    let stash = if greedy && proj != d { inp.weights } else { 0 };
    // The blocked layout pads the rows to a multiple of 16.
    let padded = rows.div_ceil(16) * 16;
    let st = |stage, what, rows, dims| StageMemory {
        stage,
        what,
        rows,
        dims,
        bytes_per_value: 4,
    };
    let mut s = Vec::new();
    match plan {
        FitPlan::InMemory => {
            s.push(st("features", "patch features", rows, d));
            s.push(st("coreset", "patch features", rows, d));
            if greedy {
                // The row-major projection lives until it is blocked.
                if proj != d {
                    s.push(st("coreset", "projection", rows, proj));
                }
                s.push(st("coreset", "blocked projection", padded, proj));
                s.push(st("coreset", "emitted rows", keep + 1, proj));
                s.push(st("coreset", "keys, owners, squares", rows, 3));
                s.push(StageMemory {
                    bytes_per_value: 2,
                    ..st(
                        "coreset",
                        "centre–centre table (at most)",
                        keep + 1,
                        coreset::GREEDY_CENTRES_PER_PASS,
                    )
                });
            }
            s.push(st("gather", "patch features", rows, d));
            s.push(st("gather", "memory bank", keep, d));
        }
        FitPlan::Spill => {
            // The projection goes to the spill file block by block and comes back, blocked,
            // once the backbone's caches are released.
            if greedy && proj != d {
                s.push(st(
                    "features",
                    "rows awaiting projection",
                    PROJECTION_BLOCK_ROWS,
                    d,
                ));
                s.push(st(
                    "features",
                    "projected block",
                    PROJECTION_BLOCK_ROWS,
                    proj,
                ));
            } else if greedy {
                s.push(st(
                    "features",
                    "rows for the greedy (no projection)",
                    padded,
                    d,
                ));
            }
            if greedy {
                s.push(st("coreset", "blocked projection", padded, proj));
                s.push(st("coreset", "emitted rows", keep + 1, proj));
                s.push(st("coreset", "keys, owners, squares", rows, 3));
                s.push(StageMemory {
                    bytes_per_value: 2,
                    ..st(
                        "coreset",
                        "centre–centre table (at most)",
                        keep + 1,
                        coreset::GREEDY_CENTRES_PER_PASS,
                    )
                });
            }
            s.push(st("gather", "memory bank", keep, d));
        }
    }
    Ok(MemoryEstimate {
        plan,
        images: inp.images,
        rows,
        keep,
        dim: d,
        baseline: inp.baseline,
        batch_working: inp.batch_working,
        released: match plan {
            FitPlan::InMemory => 0,
            FitPlan::Spill => (inp.released + stash).min(inp.baseline),
        },
        restored: match plan {
            FitPlan::InMemory => 0,
            FitPlan::Spill => stash.min(inp.baseline),
        },
        stages: s,
    })
}

/// The plan for `budget`: in memory if it fits, else spilled if that fits (and is possible),
/// else the typed refusal.
pub(super) fn choose(
    inp: &PlanInput<'_>,
    budget: Option<u64>,
    can_spill: bool,
) -> Result<MemoryEstimate> {
    let in_memory = estimate(inp, FitPlan::InMemory)?;
    let Some(budget) = budget else {
        return Ok(in_memory);
    };
    if in_memory.peak() <= budget {
        return Ok(in_memory);
    }
    let spill = estimate(inp, FitPlan::Spill)?;
    if spill.peak() <= budget && can_spill {
        return Ok(spill);
    }
    let best = if spill.peak() < in_memory.peak() {
        &spill
    } else {
        &in_memory
    };
    let mut detail = best.lines().join("; ");
    if !can_spill {
        detail.push_str("; no spill file location was given");
    }
    detail.push_str(
        "; raise the budget, fit fewer images, or lower the coreset projection dimension",
    );
    Err(Error::MemoryBudget {
        budget,
        needed: best.peak(),
        detail,
    })
}
