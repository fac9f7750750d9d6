//! The memory bank of a [`BruteForce`] index: its construction and validation, and its
//! storage in f32 or f16 ([`BankPrecision`]).

use std::sync::Mutex;

use half::f16;
use half::slice::HalfFloatSliceExt;
use ndarray::{Array2, ArrayView2, CowArray, Ix2};
use rayon::prelude::*;

use super::screen::Screen;
use super::search::{squared_norm, BankRows, Scratch};
use super::NearestNeighbours;
use crate::{Error, Result};

/// How a [`BruteForce`] index stores its memory bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BankPrecision {
    /// Single precision (4 bytes per value): exact search of the bank as given.
    #[default]
    F32,
    /// Half precision (2 bytes per value, half the memory). Values are rounded to the nearest
    /// f16 when the index is built; the search is then the exact f32 search of the rounded
    /// bank. Values beyond ±65504 do not fit and are refused.
    F16,
}

impl BankPrecision {
    /// Bytes per stored bank value.
    pub fn bytes(self) -> usize {
        match self {
            BankPrecision::F32 => 4,
            BankPrecision::F16 => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum Storage {
    F32(Array2<f32>),
    F16(Array2<f16>),
}

/// Exact search over a dense memory bank through GEMM.
///
/// The index keeps the scratch memory of its last search (at most
/// `min(queries, 2048) × min(rows, 2048)` f32 products, plus one 2048-row f32 block for an
/// f16 bank; with screening, the queries in bf16 and up to `max(64, 8k)` candidates per
/// query) to reuse it; searches may run concurrently (each extra one uses its own).
///
/// On CPUs with AVX512-BF16, f32 banks also keep a bf16 copy for screening (see
/// [`BruteForce::with_screening`]).
#[derive(Debug)]
pub struct BruteForce {
    pub(super) bank: Storage,
    pub(super) norms: Vec<f32>,
    /// bf16 screening data (f32 banks on AVX512-BF16 CPUs, unless switched off).
    pub(super) screen: Option<Screen>,
    /// Scratch of the last search, reused by the next one (saves allocating and faulting in
    /// up to 16 MiB per call); a search running while another holds it uses its own.
    pub(super) scratch: Mutex<Scratch>,
}

impl Clone for BruteForce {
    fn clone(&self) -> Self {
        Self {
            bank: self.bank.clone(),
            norms: self.norms.clone(),
            screen: self.screen.clone(),
            scratch: Mutex::default(),
        }
    }
}

impl BruteForce {
    /// Index `bank` (`[n_rows, dim]`) in f32. Row norms are computed once here, and on CPUs
    /// with AVX512-BF16 the bf16 screening data (see [`BruteForce::with_screening`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the bank has no rows, zero width, or holds a non-finite value.
    pub fn new(bank: Array2<f32>) -> Result<Self> {
        Self::new_screened(bank, true)
    }

    /// [`BruteForce::new`], building the screening data only if `screening` (see
    /// [`BruteForce::with_screening`]); without it nothing beyond the bank and its norms is
    /// allocated.
    ///
    /// # Errors
    /// As [`BruteForce::new`].
    pub fn new_screened(bank: Array2<f32>, screening: bool) -> Result<Self> {
        check_shape(bank.dim())?;
        let bank = if bank.is_standard_layout() {
            bank
        } else {
            bank.as_standard_layout().into_owned()
        };
        let norms = row_norms_checked(bank.view(), "memory bank")?;
        let screen = if screening {
            bank.as_slice()
                .and_then(|b| Screen::build(b, bank.nrows(), bank.ncols()))
        } else {
            None
        };
        Ok(Self {
            bank: Storage::F32(bank),
            norms,
            screen,
            scratch: Mutex::default(),
        })
    }

    /// Index `bank` stored with `precision` ([`BankPrecision::F16`] rounds every value to the
    /// nearest f16).
    ///
    /// # Errors
    /// As [`BruteForce::new`]; with [`BankPrecision::F16`] also [`Error::InvalidInput`] if a
    /// value is beyond the f16 range (±65504).
    pub fn with_precision(bank: Array2<f32>, precision: BankPrecision) -> Result<Self> {
        Self::with_precision_screened(bank, precision, true)
    }

    /// [`BruteForce::with_precision`], with the screening data only if `screening` (an f16
    /// bank is never screened).
    ///
    /// # Errors
    /// As [`BruteForce::with_precision`].
    pub fn with_precision_screened(
        bank: Array2<f32>,
        precision: BankPrecision,
        screening: bool,
    ) -> Result<Self> {
        match precision {
            BankPrecision::F32 => Self::new_screened(bank, screening),
            BankPrecision::F16 => {
                check_shape(bank.dim())?;
                // Non-finite input is reported as such before any rounding.
                row_norms_checked(bank.view(), "memory bank")?;
                Self::from_f16(bank.mapv(f16::from_f32))
            }
        }
    }

    /// Index a bank already stored in f16 (e.g. read from a model file).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the bank has no rows, zero width, or holds a non-finite value
    /// (an f32 value too large for f16 becomes infinite when rounded).
    pub fn from_f16(bank: Array2<f16>) -> Result<Self> {
        check_shape(bank.dim())?;
        let bank = if bank.is_standard_layout() {
            bank
        } else {
            bank.as_standard_layout().into_owned()
        };
        let d = bank.ncols();
        let mut buf = vec![0.0f32; d];
        let mut norms = Vec::with_capacity(bank.nrows());
        for (i, row) in bank.rows().into_iter().enumerate() {
            for (b, &v) in buf.iter_mut().zip(row.iter()) {
                *b = v.to_f32();
            }
            norms.push(check_norm(
                squared_norm(&buf),
                "memory bank",
                i,
                " (f16 holds ±65504 at most)",
            )?);
        }
        Ok(Self {
            bank: Storage::F16(bank),
            norms,
            screen: None,
            scratch: Mutex::default(),
        })
    }

    /// Index a copy of `bank`. See [`BruteForce::new`].
    ///
    /// # Errors
    /// As [`BruteForce::new`].
    pub fn from_view(bank: ArrayView2<f32>) -> Result<Self> {
        Self::new(bank.to_owned())
    }

    /// Switch the bf16 screening pass on (the default where available) or off.
    ///
    /// With screening, every query is first compared with a bf16 copy of the centred bank
    /// (`vdpbf16ps`, twice the f32 product throughput) under a proven error bound, which
    /// leaves a handful of candidates per query; their distances are then computed exactly
    /// from the f32 rows. The k nearest in exact arithmetic are always among the candidates,
    /// so the result is that of the f32 path up to ties within f32 rounding (it is in fact
    /// closer to exact: every candidate's distance is computed directly). Queries with too
    /// many candidates (e.g. many duplicated or equidistant rows) go through the f32 path.
    ///
    /// Screening needs an f32 bank and a CPU with AVX512-F and AVX512-BF16; otherwise (or
    /// when switched off) the search is the f32 GEMM path. Its products run on AMX tiles when
    /// the CPU and the operating system allow AMX-BF16, else on `vdpbf16ps`
    /// ([`BruteForce::screening_kernel`] says which). It costs `n_rows × dim × 2` bytes
    /// (plus about 50 bytes per row), see [`BruteForce::screening_bytes`]; switching it off
    /// frees them.
    pub fn with_screening(mut self, on: bool) -> Self {
        self.set_screening(on);
        self
    }

    /// [`BruteForce::with_screening`] in place.
    pub fn set_screening(&mut self, on: bool) {
        if !on {
            self.screen = None;
        } else if self.screen.is_none() {
            if let Storage::F32(b) = &self.bank {
                self.screen = b
                    .as_slice()
                    .and_then(|s| Screen::build(s, b.nrows(), b.ncols()));
            }
        }
    }

    /// Whether searches use the bf16 screening pass (see [`BruteForce::with_screening`]).
    pub fn screening(&self) -> bool {
        self.screen.is_some()
    }

    /// The kernel of the screening pass: `"amx-bf16"` (AMX tiles), `"avx512-bf16"`
    /// (`vdpbf16ps`), or `None` when searches do not screen.
    pub fn screening_kernel(&self) -> Option<&'static str> {
        self.screen.as_ref().map(Screen::kernel_name)
    }

    /// Bytes held by the bf16 screening data (0 when screening is off).
    pub fn screening_bytes(&self) -> usize {
        self.screen.as_ref().map_or(0, Screen::bytes)
    }

    /// How the bank is stored.
    pub fn precision(&self) -> BankPrecision {
        match self.bank {
            Storage::F32(_) => BankPrecision::F32,
            Storage::F16(_) => BankPrecision::F16,
        }
    }

    /// The indexed bank as f32, `[n_rows, dim]`: borrowed when stored in f32, converted (a new
    /// array) when stored in f16.
    pub fn bank(&self) -> CowArray<'_, f32, Ix2> {
        match &self.bank {
            Storage::F32(b) => CowArray::from(b.view()),
            Storage::F16(b) => CowArray::from(f16_to_f32(b)),
        }
    }

    /// The bank as stored, if stored in f32.
    pub fn bank_f32(&self) -> Option<ArrayView2<'_, f32>> {
        match &self.bank {
            Storage::F32(b) => Some(b.view()),
            Storage::F16(_) => None,
        }
    }

    /// The bank as stored, if stored in f16.
    pub fn bank_f16(&self) -> Option<ArrayView2<'_, f16>> {
        match &self.bank {
            Storage::F16(b) => Some(b.view()),
            Storage::F32(_) => None,
        }
    }

    /// Give the bank back as f32 (converted when stored in f16).
    pub fn into_bank(self) -> Array2<f32> {
        match self.bank {
            Storage::F32(b) => b,
            Storage::F16(b) => f16_to_f32(&b),
        }
    }

    /// Squared L2 norm of every bank row (of the stored, possibly f16-rounded, values).
    pub fn row_norms(&self) -> &[f32] {
        &self.norms
    }

    /// Bytes held by the stored bank values.
    pub fn bank_bytes(&self) -> usize {
        self.len() * self.dim() * self.precision().bytes()
    }

    pub(super) fn rows(&self) -> Result<BankRows<'_>> {
        let bad = || Error::input("memory bank is not contiguous");
        Ok(match &self.bank {
            Storage::F32(b) => BankRows::F32(b.as_slice().ok_or_else(bad)?),
            Storage::F16(b) => BankRows::F16(b.as_slice().ok_or_else(bad)?),
        })
    }
}

fn check_shape((rows, cols): (usize, usize)) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(Error::input(format!(
            "memory bank must have at least one row and one column, got shape [{rows}, {cols}]"
        )));
    }
    Ok(())
}

/// Standard-layout f32 copy of an f16 array.
fn f16_to_f32(b: &Array2<f16>) -> Array2<f32> {
    let b = b.as_standard_layout();
    match b.as_slice() {
        Some(s) => {
            let mut out = vec![0.0f32; s.len()];
            s.convert_to_f32_slice(&mut out);
            Array2::from_shape_vec(b.dim(), out).unwrap_or_else(|_| b.mapv(f16::to_f32))
        }
        None => b.mapv(f16::to_f32),
    }
}

/// Largest accepted squared row norm: keeps `‖a‖² + 2|a·b| + ‖b‖²` finite in f32.
const MAX_SQUARED_NORM: f64 = (f32::MAX / 8.0) as f64;

/// Checks one f64 squared row norm; errors name the row.
fn check_norm(s: f64, what: &str, i: usize, hint: &str) -> Result<f32> {
    // f64 cannot overflow on squares of finite f32 values, so NaN/inf here means the row
    // itself holds a NaN or an infinity.
    if !s.is_finite() {
        return Err(Error::input(format!(
            "{what} row {i} holds a NaN or infinite value{hint}"
        )));
    }
    if s > MAX_SQUARED_NORM {
        return Err(Error::input(format!(
            "{what} row {i} has squared norm {s:e}, above the supported {MAX_SQUARED_NORM:e}"
        )));
    }
    Ok(s as f32)
}

/// Squared norm of every row; errors name the first row that is non-finite or too large.
pub(super) fn row_norms_checked(rows: ArrayView2<f32>, what: &str) -> Result<Vec<f32>> {
    // Norms in parallel, checks in row order (the error names the first bad row).
    let norms: Vec<f64> = (0..rows.nrows())
        .into_par_iter()
        .map(|i| rows.row(i))
        .map(|row| match row.as_slice() {
            Some(s) => squared_norm(s),
            None => squared_norm(&row.to_vec()),
        })
        .collect();
    norms
        .into_iter()
        .enumerate()
        .map(|(i, s)| check_norm(s, what, i, ""))
        .collect()
}
