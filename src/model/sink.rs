//! Where a fit's patch features go while they are extracted ([`BankSink`]).

use super::*;

/// Where the patch features of a fit go while they are extracted: kept whole (the in-memory
/// plan), or projected with the full rows spilled to a file.
pub(super) struct BankSink {
    /// In memory: every row. Spilled: unused.
    bank: Vec<f32>,
    /// Spilled, greedy, no projection: the rows themselves as the greedy reads them.
    z: Option<coreset::ProjectedBank>,
    /// Spilled, greedy, projecting: one block's projection on its way to the spill file.
    zblock: Vec<f32>,
    /// Spilled: rows awaiting projection (less than one projection block).
    pending: Vec<f32>,
    /// Spilled, greedy, projecting: the projection (written to the spill file block by block).
    projector: Option<coreset::Projector>,
    /// Spilled with a greedy sampler.
    greedy: bool,
    spill: Option<SpillFile>,
    dim: usize,
    pub(super) rows: usize,
}

impl BankSink {
    /// The spill file for `est` at `path`: with a projection region when the greedy projects.
    pub(super) fn spill_file(
        path: &std::path::Path,
        cfg: &coreset::CoresetConfig,
        est: &MemoryEstimate,
    ) -> Result<SpillFile> {
        if is_greedy(cfg) && coreset::projects(cfg, est.dim) {
            SpillFile::with_projection(path, est.dim, est.rows, cfg.projection_dim)
        } else {
            SpillFile::create(path, est.dim)
        }
    }

    pub(super) fn new(
        cfg: &coreset::CoresetConfig,
        est: &MemoryEstimate,
        spill: Option<SpillFile>,
    ) -> Result<BankSink> {
        let greedy = is_greedy(cfg);
        let dim = est.dim;
        let mut sink = BankSink {
            bank: Vec::new(),
            z: None,
            zblock: Vec::new(),
            pending: Vec::new(),
            projector: None,
            greedy,
            spill,
            dim,
            rows: 0,
        };
        // Exact reservations: a growing vector would briefly hold twice its size.
        if sink.spill.is_none() {
            sink.bank.reserve_exact(est.rows * dim);
        } else if greedy {
            if coreset::projects(cfg, dim) {
                sink.projector = Some(coreset::Projector::new(dim, cfg.projection_dim, cfg.seed)?);
                sink.pending
                    .reserve_exact(coreset::PROJECTION_BLOCK_ROWS * dim);
                sink.zblock
                    .reserve_exact(coreset::PROJECTION_BLOCK_ROWS * cfg.projection_dim);
            } else {
                sink.z = Some(coreset::ProjectedBank::with_capacity(est.rows, dim)?);
            }
        }
        Ok(sink)
    }

    pub(super) fn push(&mut self, emb: ndarray::ArrayView2<f32>) -> Result<()> {
        let rows = emb.as_standard_layout();
        let src = rows.as_slice().unwrap_or(&[]);
        let Some(spill) = self.spill.as_mut() else {
            self.bank.extend_from_slice(src);
            self.rows += emb.nrows();
            return Ok(());
        };
        if let Some(pos) = src.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "the memory bank holds a non-finite value at row {}, column {}",
                self.rows + pos / self.dim,
                pos % self.dim
            )));
        }
        spill.append(src)?;
        self.rows += emb.nrows();
        if !self.greedy {
            return Ok(());
        }
        let Some(proj) = &self.projector else {
            if let Some(z) = self.z.as_mut() {
                z.push_rows(src)?;
            }
            return Ok(());
        };
        // Projected in the blocks `coreset::project` uses, for the same bits.
        let block = coreset::PROJECTION_BLOCK_ROWS * self.dim;
        let mut rest = src;
        while !rest.is_empty() {
            let take = (block - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == block {
                proj.project_block(&self.pending, &mut self.zblock);
                spill.append_projection(&self.zblock)?;
                self.zblock.clear();
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// The chosen rows (`keep × dim`, in selection order) and the coverage radius.
    ///
    /// Spilled: the projection is read back from the spill file into the blocked layout the
    /// greedy reads (the only copy of it in memory), dropped after the selection, and the
    /// chosen rows are read back.
    ///
    /// `backbone` (spilled fits with a projection region only) is released while the coreset
    /// is chosen: its caches dropped, its weights stashed in the spill file and restored before
    /// the chosen rows are read.
    pub(super) fn finish(
        mut self,
        cfg: &coreset::CoresetConfig,
        keep: usize,
        backbone: Option<&mut Backbone>,
        progress: &mut dyn FnMut(FitProgress),
    ) -> Result<(Array2<f32>, Option<f32>)> {
        let mut report = |selected, total| progress(FitProgress::Coreset { selected, total });
        let Some(mut spill) = self.spill.take() else {
            let bank =
                Array2::from_shape_vec((self.rows, self.dim), std::mem::take(&mut self.bank))
                    .map_err(|e| Error::input(format!("memory bank shape: {e}")))?;
            let sel = coreset::select_with_radius(bank.view(), cfg, &mut report)?;
            let memory = bank.select(Axis(0), &sel.indices);
            return Ok((memory, sel.radius));
        };
        let mut stashed = None;
        if let Some(b) = backbone {
            b.release_caches();
            if spill.has_projection() {
                b.stash_weights(&mut |w| spill.append_stash(w))?;
                stashed = Some(b);
            }
        }
        if let Some(proj) = &self.projector {
            if !self.pending.is_empty() {
                proj.project_block(&self.pending, &mut self.zblock);
                spill.append_projection(&self.zblock)?;
            }
            self.pending = Vec::new();
            self.zblock = Vec::new();
            // What the backbone and the feature stage freed lies in pieces between live
            // allocations: give it back before the largest allocation of the fit.
            crate::os_memory::return_freed_memory();
            let mut z = coreset::ProjectedBank::with_capacity(self.rows, cfg.projection_dim)?;
            spill.read_projection(|rows| z.push_rows(rows))?;
            self.z = Some(z);
        }
        let sel =
            coreset::select_from_projected(self.z.as_ref(), self.rows, keep, cfg, &mut report)?;
        self.z = None;
        progress(FitProgress::Gathering {
            rows: sel.indices.len(),
        });
        if let Some(b) = stashed {
            let mut at = 0u64;
            b.restore_weights(&mut |w| {
                spill.read_stash(at, w)?;
                at += w.len() as u64;
                Ok(())
            })?;
        }
        let memory = spill.gather(&sel.indices)?;
        drop(spill);
        Ok((memory, sel.radius))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coreset::{CoresetConfig, CoresetSize, Sampler};

    /// Rows arriving in awkward chunks (1, 7, 300 rows) are projected in the blocks of the
    /// whole-bank projection: the spilled selection, radius and rows equal the in-memory ones.
    #[test]
    fn spilled_sink_equals_in_memory_selection_for_any_arrival_chunks() {
        let (n, d) = (coreset::PROJECTION_BLOCK_ROWS + 700, 1536);
        let bank = Array2::from_shape_fn((n, d), |(i, j)| {
            ((i * 2654435761 + j * 40503) % 1000) as f32 / 250.0 - 2.0
        });
        let dir = std::env::temp_dir().join(format!("pc-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (Sampler::Greedy, 128, vec![1usize, 7, 300]),
            (Sampler::APPROXIMATE_GREEDY_DEFAULT, 128, vec![300]),
            // No projection: the greedy reads the rows themselves.
            (Sampler::Greedy, 0, vec![300]),
        ];
        for (sampler, projection_dim, chunks) in cases {
            let cfg = CoresetConfig {
                sampler,
                size: CoresetSize::Count(60),
                projection_dim,
                seed: 2,
            };
            let want = coreset::select_with_radius(bank.view(), &cfg, |_, _| {}).unwrap();
            for chunk in chunks {
                let est = MemoryEstimate {
                    plan: FitPlan::Spill,
                    images: 1,
                    rows: n,
                    keep: 60,
                    dim: d,
                    baseline: 0,
                    batch_working: 0,
                    released: 0,
                    restored: 0,
                    stages: Vec::new(),
                };
                let path = dir.join(format!("s{chunk}-{projection_dim}"));
                let spill = BankSink::spill_file(&path, &cfg, &est).unwrap();
                let mut sink = BankSink::new(&cfg, &est, Some(spill)).unwrap();
                let mut start = 0;
                while start < n {
                    let end = (start + chunk).min(n);
                    sink.push(bank.slice(ndarray::s![start..end, ..])).unwrap();
                    start = end;
                }
                let (rows, radius) = sink.finish(&cfg, 60, None, &mut |_| {}).unwrap();
                let what = format!("{sampler:?} p {projection_dim} chunk {chunk}");
                assert_eq!(
                    radius.map(f32::to_bits),
                    want.radius.map(f32::to_bits),
                    "{what}"
                );
                assert_eq!(rows, bank.select(Axis(0), &want.indices), "{what}");
                assert!(!path.exists());
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
