//! Runtime precision switching under memory pressure: [`AdaptiveQuantizer`] and the
//! self-describing [`QuantizedTensor`] it produces.
//!
//! Implements the seed's `AdaptiveQuantizer` ("runtime precision switching under memory
//! pressure"), corrected where the seed was a sketch:
//!
//! - **Formats.** A tensor is stored as IEEE `f16` or as GGML's block formats `Q8_0` / `Q4_0`
//!   (32 values per block with one `f16` scale each; see [`squish_core::quant`]), never as one
//!   scale per tensor: a single outlier then only stretches its own block of 32 values. The
//!   [`QuantizedTensor`] carries its [`Precision`] and shape, so a reader can never dequantise
//!   it with the wrong format.
//! - **Policy.** The precision follows a hysteresis state machine (a Schmitt trigger, as in
//!   control systems): each lower-precision level has an *enter* threshold and a lower *exit*
//!   threshold, and precision is only raised again after a minimum dwell time on the caller's
//!   clock. Pressure flapping around a threshold therefore does not flip the format on every
//!   update.
//! - **Input.** NaN and infinity are errors (the seed silently used scale 1.0 on NaN), and so is
//!   a value beyond `f16::MAX` on the `f16` path (the seed produced infinity).
//!
//! Block formats follow GGML bit for bit (through `squish_core::quant`: `Q8_0` as ggml-cpu's
//! x86 quantiser, `Q4_0` as the `ggml-quants.c` reference); byte sizes are exact: `Q8_0` is `n / 32 × 34` bytes, `Q4_0` is
//! `n / 32 × 18` bytes, `f16` is `2 n` bytes.
//!
//! # Example
//! ```
//! use std::time::{Duration, Instant};
//! use ndarray::Array2;
//! use squish_kv::adaptive_quantizer::{AdaptiveQuantizer, AdaptiveQuantizerConfig, Precision};
//!
//! let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default())?;
//! let t0 = Instant::now();
//! assert_eq!(aq.update(0.50, t0)?, Precision::F16);
//! assert_eq!(aq.update(0.95, t0)?, Precision::Q4_0); // lowering precision is immediate
//!
//! let x = Array2::from_shape_fn((4, 64), |(r, c)| (r as f32 - 1.5) * 0.25 + c as f32 * 0.01);
//! let q = aq.quantize(&x)?;
//! assert_eq!(q.precision(), Precision::Q4_0);
//! assert_eq!(q.payload_bytes(), 4 * 64 / 32 * 18);
//! let y = q.dequantize();
//! // Q4_0 error is at most one step d = |block max| / 8 (< 0.09 here).
//! assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() <= 0.09));
//!
//! // Pressure back to normal: precision is raised only after the minimum dwell time.
//! assert_eq!(aq.update(0.10, t0 + Duration::from_millis(10))?, Precision::Q4_0);
//! assert_eq!(aq.update(0.10, t0 + aq.config().min_dwell)?, Precision::F16);
//! # Ok::<(), squish_kv::Error>(())
//! ```

use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayRef2};
use squish_core::ConfigError;
use squish_core::convert::{f16, f16_to_f32_into, f32_to_f16_checked_into};
use squish_core::quant::{
    BlockQ4_0, BlockQ8_0, QK4_0, QK8_0, blocks_as_bytes, dequantize_row_q4_0, dequantize_row_q8_0,
    quantize_row_q4_0, quantize_row_q8_0,
};

use crate::{Error, Result};

/// A storage precision of [`QuantizedTensor`], from most to least precise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// IEEE binary16, 2 bytes per value; round to nearest even.
    F16,
    /// GGML `Q8_0`: blocks of 32 `i8` codes and one `f16` scale (34 bytes per 32 values).
    Q8_0,
    /// GGML `Q4_0`: blocks of 32 packed 4-bit codes and one `f16` scale (18 bytes per 32
    /// values).
    Q4_0,
}

impl Precision {
    /// Bytes that `n` values take in this precision (the payload, without metadata): `2 n`
    /// for `F16`, `n / 32 × 34` for `Q8_0`, `n / 32 × 18` for `Q4_0`.
    ///
    /// # Errors
    /// [`Error::Shape`] if the precision is a block format and `n` is not a multiple of 32, or
    /// if the byte count does not fit in `usize`.
    ///
    /// # Example
    /// ```
    /// use squish_kv::adaptive_quantizer::Precision;
    /// assert_eq!(Precision::Q4_0.payload_bytes(64)?, 2 * 18);
    /// assert_eq!(Precision::F16.payload_bytes(48)?, 96);
    /// assert!(Precision::Q8_0.payload_bytes(48).is_err());
    /// # Ok::<(), squish_kv::Error>(())
    /// ```
    pub fn payload_bytes(self, n: usize) -> Result<usize> {
        let (per, bytes) = match self {
            Self::F16 => (1, size_of::<f16>()),
            Self::Q8_0 => (QK8_0, size_of::<BlockQ8_0>()),
            Self::Q4_0 => (QK4_0, size_of::<BlockQ4_0>()),
        };
        if !n.is_multiple_of(per) {
            return Err(squish_core::ShapeError::new(
                "Precision::payload_bytes n",
                format_args!("a multiple of {per} values for {self:?} blocks"),
                format_args!("{n} values"),
            )
            .into());
        }
        (n / per).checked_mul(bytes).ok_or_else(|| {
            Error::from(squish_core::ShapeError::new(
                "Precision::payload_bytes n",
                format_args!("a byte count within usize for {self:?}"),
                format_args!("{n} values"),
            ))
        })
    }

    /// Storage bits per value: 16, 8.5 or 4.5.
    pub const fn bits_per_value(self) -> f64 {
        match self {
            Self::F16 => 16.0,
            Self::Q8_0 => 8.5,
            Self::Q4_0 => 4.5,
        }
    }
}

/// The payload of a [`QuantizedTensor`]: the buffer of its precision, in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// One `f16` per value.
    F16(Vec<f16>),
    /// `Q8_0` blocks; each row of the tensor is `cols / 32` consecutive blocks.
    Q8_0(Vec<BlockQ8_0>),
    /// `Q4_0` blocks; each row of the tensor is `cols / 32` consecutive blocks.
    Q4_0(Vec<BlockQ4_0>),
}

impl TensorData {
    /// The precision of this buffer.
    pub const fn precision(&self) -> Precision {
        match self {
            Self::F16(_) => Precision::F16,
            Self::Q8_0(_) => Precision::Q8_0,
            Self::Q4_0(_) => Precision::Q4_0,
        }
    }

    /// Bytes of the buffer (its length, not its capacity).
    pub fn bytes(&self) -> usize {
        match self {
            Self::F16(v) => size_of_val(v.as_slice()),
            Self::Q8_0(b) => blocks_as_bytes(b).len(),
            Self::Q4_0(b) => blocks_as_bytes(b).len(),
        }
    }

    /// Number of values the buffer holds.
    fn values(&self) -> usize {
        match self {
            Self::F16(v) => v.len(),
            Self::Q8_0(b) => b.len() * QK8_0,
            Self::Q4_0(b) => b.len() * QK4_0,
        }
    }
}

/// A self-describing quantised `[rows, cols]` tensor: its [`Precision`], its shape and its
/// buffer, which always agree (checked on construction).
///
/// For the block formats `cols` is a multiple of 32, so no block spans two rows (as GGML
/// requires of a tensor row).
///
/// # Example
/// ```
/// use ndarray::Array2;
/// use squish_kv::adaptive_quantizer::{Precision, QuantizedTensor};
/// // Integers with max |x| = 127: the Q8_0 scale is exactly 1, so the round trip is exact.
/// let x = Array2::from_shape_fn((2, 32), |(_, c)| c as f32 * 4.0 - 127.0);
/// let q = QuantizedTensor::quantize(Precision::Q8_0, &x)?;
/// assert_eq!((q.rows(), q.cols(), q.payload_bytes()), (2, 32, 2 * 34));
/// assert_eq!(q.dequantize(), x);
/// # Ok::<(), squish_kv::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    rows: usize,
    cols: usize,
    data: TensorData,
}

impl Default for QuantizedTensor {
    /// An empty `0 x 0` `f16` tensor, to be filled by a `*_into` call.
    fn default() -> Self {
        Self {
            rows: 0,
            cols: 0,
            data: TensorData::F16(Vec::new()),
        }
    }
}

/// Bytes of metadata a [`QuantizedTensor`] needs besides its payload when serialised: a
/// one-byte precision tag and the two dimensions as `u64`.
pub const TENSOR_METADATA_BYTES: usize = 1 + 2 * size_of::<u64>();

impl QuantizedTensor {
    /// A tensor from its parts, checking that they agree and that every value they stand for
    /// is finite, as in a tensor made by [`quantize`](Self::quantize).
    ///
    /// # Errors
    /// - [`Error::Shape`] if the buffer does not hold exactly `rows * cols` values, or if a
    ///   block format's `cols` is not a multiple of 32.
    /// - [`Error::Core`] with `NonFinite` for the first NaN or infinite `f16` value (`index`
    ///   is its row-major position) or block scale `d` (`index` is the block's position).
    ///
    /// # Performance
    /// One pass over the `f16` values or the block scales.
    pub fn from_parts(rows: usize, cols: usize, data: TensorData) -> Result<Self> {
        check_shape(data.precision(), rows, cols)?;
        let n = rows * cols;
        if data.values() != n {
            return Err(squish_core::ShapeError::new(
                "QuantizedTensor::from_parts data",
                format_args!("{rows} x {cols} = {n} values"),
                format_args!("{} values", data.values()),
            )
            .into());
        }
        let (context, bad) = match &data {
            TensorData::F16(v) => (
                "QuantizedTensor::from_parts f16 values",
                first_non_finite(v.iter().copied()),
            ),
            TensorData::Q8_0(b) => (
                "QuantizedTensor::from_parts block scales",
                first_non_finite(b.iter().map(|b| b.d)),
            ),
            TensorData::Q4_0(b) => (
                "QuantizedTensor::from_parts block scales",
                first_non_finite(b.iter().map(|b| b.d)),
            ),
        };
        if let Some((index, value)) = bad {
            return Err(squish_core::Error::NonFinite {
                context,
                index,
                value: value.to_f32(),
            }
            .into());
        }
        Ok(Self { rows, cols, data })
    }

    /// Quantises `x` at `precision` into a new tensor. See [`AdaptiveQuantizer::quantize_into`]
    /// for the rules and errors.
    ///
    /// # Errors
    /// As [`AdaptiveQuantizer::quantize_into`].
    pub fn quantize(precision: Precision, x: &ArrayRef2<f32>) -> Result<Self> {
        let mut out = Self::default();
        let mut scratch = Vec::new();
        encode(precision, x, &mut scratch, &mut out)?;
        Ok(out)
    }

    /// The parts: `(rows, cols, data)`.
    pub fn into_parts(self) -> (usize, usize, TensorData) {
        (self.rows, self.cols, self.data)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (values per row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage precision.
    pub fn precision(&self) -> Precision {
        self.data.precision()
    }

    /// The buffer.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Bytes of the payload buffer (codes and scales), from its length.
    pub fn payload_bytes(&self) -> usize {
        self.data.bytes()
    }

    /// Bytes held: the payload plus [`TENSOR_METADATA_BYTES`].
    pub fn bytes_held(&self) -> usize {
        self.payload_bytes() + TENSOR_METADATA_BYTES
    }

    /// Reconstructs the tensor into `out` (any memory layout). `f16` and block dequantisation
    /// are exact in `f32` (`code * d`, as GGML).
    ///
    /// # Errors
    /// [`Error::Shape`] if `out` is not `rows x cols`.
    ///
    /// # Performance
    /// No allocation. A contiguous `out` is written in one pass by squish-core's kernels; any
    /// other layout goes through a 32-value stack buffer per block.
    pub fn dequantize_into(&self, out: &mut ArrayRef2<f32>) -> Result<()> {
        if out.dim() != (self.rows, self.cols) {
            return Err(squish_core::ShapeError::new(
                "QuantizedTensor::dequantize_into out",
                format_args!("{} x {}", self.rows, self.cols),
                format_args!("{} x {}", out.nrows(), out.ncols()),
            )
            .into());
        }
        if let Some(o) = out.as_slice_mut() {
            match &self.data {
                TensorData::F16(v) => f16_to_f32_into(v, o),
                TensorData::Q8_0(b) => dequantize_row_q8_0(b, o),
                TensorData::Q4_0(b) => dequantize_row_q4_0(b, o),
            }
            return Ok(());
        }
        let mut buf = [0.0f32; 32];
        for (r, mut row) in out.rows_mut().into_iter().enumerate() {
            for (c, o) in row.iter_mut().enumerate() {
                // Element-wise for f16; block formats decode a block when entering it.
                match &self.data {
                    TensorData::F16(v) => *o = v[r * self.cols + c].to_f32(),
                    TensorData::Q8_0(b) => {
                        if c % 32 == 0 {
                            dequantize_row_q8_0(&b[(r * self.cols + c) / 32..][..1], &mut buf);
                        }
                        *o = buf[c % 32];
                    }
                    TensorData::Q4_0(b) => {
                        if c % 32 == 0 {
                            dequantize_row_q4_0(&b[(r * self.cols + c) / 32..][..1], &mut buf);
                        }
                        *o = buf[c % 32];
                    }
                }
            }
        }
        Ok(())
    }

    /// Reconstructs the tensor into a new array; see [`dequantize_into`](Self::dequantize_into).
    pub fn dequantize(&self) -> Array2<f32> {
        let mut out = Array2::zeros((self.rows, self.cols));
        // The shape matches by construction.
        let _ = self.dequantize_into(&mut out);
        out
    }
}

/// Configuration of [`AdaptiveQuantizer`]: the hysteresis thresholds on memory pressure (a
/// fraction in `[0, 1]`) and the minimum dwell time.
///
/// Levels: `F16` below `int8_enter`; `Q8_0` from `int8_enter`; `Q4_0` from `int4_enter`.
/// Leaving a level needs the pressure to fall below its (lower) exit threshold **and**
/// `min_dwell` to have passed since the last change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AdaptiveQuantizerConfig {
    /// Pressure at or above which `F16` switches to `Q8_0`; in `(0, 1]`.
    pub int8_enter: f64,
    /// Pressure below which `Q8_0` (or `Q4_0`) returns to `F16`; in `[0, int8_enter)`.
    pub int8_exit: f64,
    /// Pressure at or above which precision drops to `Q4_0`; in `(int8_enter, 1]`.
    pub int4_enter: f64,
    /// Pressure below which `Q4_0` returns to `Q8_0`; in `(int8_exit, int4_enter)`.
    pub int4_exit: f64,
    /// Minimum time at a level before precision may be raised again.
    pub min_dwell: Duration,
}

impl Default for AdaptiveQuantizerConfig {
    /// The seed's operating points (F16 at 50 % pressure, INT8 at 80 %, INT4 at 92 %) with
    /// 10-point hysteresis bands: enter INT8 at 0.75 / exit at 0.65, enter INT4 at 0.90 / exit
    /// at 0.80, and a 1 s minimum dwell.
    fn default() -> Self {
        Self {
            int8_enter: 0.75,
            int8_exit: 0.65,
            int4_enter: 0.90,
            int4_exit: 0.80,
            min_dwell: Duration::from_secs(1),
        }
    }
}

impl AdaptiveQuantizerConfig {
    /// Checks every field and the ordering of the thresholds.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field that breaks its rule (see the field docs).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = "AdaptiveQuantizer";
        let unit = |field, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::new(c, field, "must be in [0, 1]", v))
            }
        };
        unit("int8_enter", self.int8_enter)?;
        unit("int8_exit", self.int8_exit)?;
        unit("int4_enter", self.int4_enter)?;
        unit("int4_exit", self.int4_exit)?;
        if self.int8_exit >= self.int8_enter {
            return Err(ConfigError::new(
                c,
                "int8_exit",
                format!("must be < int8_enter ({})", self.int8_enter),
                self.int8_exit,
            ));
        }
        if self.int4_enter <= self.int8_enter {
            return Err(ConfigError::new(
                c,
                "int4_enter",
                format!("must be > int8_enter ({})", self.int8_enter),
                self.int4_enter,
            ));
        }
        if self.int4_exit >= self.int4_enter || self.int4_exit <= self.int8_exit {
            return Err(ConfigError::new(
                c,
                "int4_exit",
                format!(
                    "must be in (int8_exit, int4_enter) = ({}, {})",
                    self.int8_exit, self.int4_enter
                ),
                self.int4_exit,
            ));
        }
        Ok(())
    }
}

/// Chooses a storage precision from memory pressure with hysteresis and quantises tensors at
/// it. Implements the seed's `AdaptiveQuantizer`.
///
/// The state machine (`p` = pressure passed to [`update`](Self::update)):
///
/// ```text
///            p >= int8_enter            p >= int4_enter
///   F16 ───────────────────▶ Q8_0 ─────────────────────▶ Q4_0
///   F16 ◀─────────────────── Q8_0 ◀───────────────────── Q4_0
///        p < int8_exit, dwell      p < int4_exit, dwell
///   (from Q4_0 with p < int8_exit, straight to F16; from F16 with p >= int4_enter, straight
///    to Q4_0)
/// ```
///
/// Lowering precision is immediate: running out of memory is worse than a switch. Raising it
/// needs `min_dwell` since the last change, so a signal oscillating across a whole band
/// switches at most twice per `min_dwell`, and one oscillating inside a band at most once.
#[derive(Debug, Clone)]
pub struct AdaptiveQuantizer {
    cfg: AdaptiveQuantizerConfig,
    level: Precision,
    last_change: Option<Instant>,
    transitions: u64,
    scratch: Vec<f32>,
}

impl AdaptiveQuantizer {
    /// A quantizer at `F16` that has not yet changed level.
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg` is invalid.
    pub fn new(cfg: AdaptiveQuantizerConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            level: Precision::F16,
            last_change: None,
            transitions: 0,
            scratch: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AdaptiveQuantizerConfig {
        &self.cfg
    }

    /// The current precision.
    pub fn precision(&self) -> Precision {
        self.level
    }

    /// Number of level changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Feeds the current memory pressure (fraction of the budget in use) observed at `now`,
    /// and returns the precision to use from now on.
    ///
    /// `now` comes from the caller's clock; an instant earlier than the last change counts as
    /// no time passed.
    ///
    /// # Errors
    /// [`Error::Config`] (field `pressure`) if `pressure` is not in `[0, 1]`: negative,
    /// above 1, NaN or infinite (one variant for the one argument, as for the other scalar
    /// parameters of this crate). The state, dwell clock included, is unchanged.
    pub fn update(&mut self, pressure: f64, now: Instant) -> Result<Precision> {
        if !(0.0..=1.0).contains(&pressure) {
            return Err(ConfigError::new(
                "AdaptiveQuantizer",
                "pressure",
                "must be in [0, 1]",
                pressure,
            )
            .into());
        }
        let c = &self.cfg;
        let target = if pressure >= c.int4_enter {
            Precision::Q4_0
        } else {
            match self.level {
                Precision::Q4_0 if pressure >= c.int4_exit => Precision::Q4_0,
                Precision::F16 if pressure < c.int8_enter => Precision::F16,
                // F16 at >= int8_enter, Q8_0 above its exit, Q4_0 below its exit but above
                // INT8's exit.
                _ if pressure >= c.int8_exit => Precision::Q8_0,
                _ => Precision::F16,
            }
        };
        let dwelled = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= c.min_dwell);
        // A target above the current level lowers precision (immediate); below raises it.
        if target > self.level || (target < self.level && dwelled) {
            self.level = target;
            self.last_change = Some(now);
            self.transitions += 1;
        }
        Ok(self.level)
    }

    /// Quantises `x` at the current precision into a new tensor; see
    /// [`quantize_into`](Self::quantize_into).
    ///
    /// # Errors
    /// As [`quantize_into`](Self::quantize_into).
    pub fn quantize(&mut self, x: &ArrayRef2<f32>) -> Result<QuantizedTensor> {
        let mut out = QuantizedTensor::default();
        self.quantize_into(x, &mut out)?;
        Ok(out)
    }

    /// Quantises `x` (`[rows, cols]`, any layout) at the current precision into `out`,
    /// reusing `out`'s buffer when it already holds that precision.
    ///
    /// - `F16`: round to nearest even.
    /// - `Q8_0` / `Q4_0`: GGML's quantisation per block of 32 values of a row
    ///   (`squish_core::quant::quantize_row_q8_0` / `quantize_row_q4_0`).
    ///
    /// # Errors
    /// - [`Error::Shape`] if the precision is a block format and `cols` is not a multiple of
    ///   32.
    /// - [`Error::Core`] with `NonFinite` for the first NaN or infinity in `x`.
    /// - [`Error::Core`] with `OutOfRange` for the first value with `|x| > f16::MAX` (65504)
    ///   at `F16`, or a block whose `f16` scale would overflow at `Q8_0` / `Q4_0`.
    ///
    /// On error `out` is left as an empty `0 x 0` tensor (buffer capacity kept).
    ///
    /// # Performance
    /// No allocation once `out` (and, for a non-contiguous `x`, the internal scratch) has
    /// grown. `F16` is one F16C conversion pass with the range check folded in; `Q8_0` / `Q4_0`
    /// are squish-core's whole-row AVX2 quantisers (one fused pass per 8 blocks).
    pub fn quantize_into(&mut self, x: &ArrayRef2<f32>, out: &mut QuantizedTensor) -> Result<()> {
        encode(self.level, x, &mut self.scratch, out)
    }
}

/// The index and value of the first NaN or infinity in `values`.
fn first_non_finite(values: impl Iterator<Item = f16>) -> Option<(usize, f16)> {
    values.enumerate().find(|(_, h)| !h.is_finite())
}

fn check_shape(precision: Precision, rows: usize, cols: usize) -> Result<()> {
    if precision != Precision::F16 && !cols.is_multiple_of(32) {
        return Err(squish_core::ShapeError::new(
            "QuantizedTensor cols",
            format_args!("a multiple of 32 for {precision:?} blocks"),
            cols,
        )
        .into());
    }
    rows.checked_mul(cols).ok_or_else(|| {
        Error::from(squish_core::ShapeError::new(
            "QuantizedTensor shape",
            "rows * cols within usize",
            format_args!("{rows} x {cols}"),
        ))
    })?;
    Ok(())
}

fn encode(
    precision: Precision,
    x: &ArrayRef2<f32>,
    scratch: &mut Vec<f32>,
    out: &mut QuantizedTensor,
) -> Result<()> {
    let (rows, cols) = x.dim();
    check_shape(precision, rows, cols)?;
    let src: &[f32] = match x.as_slice() {
        Some(s) => s,
        None => {
            scratch.clear();
            scratch.extend(x.iter().copied());
            scratch
        }
    };
    out.rows = 0;
    out.cols = 0;
    let r = encode_data(precision, src, &mut out.data);
    if r.is_err() {
        // Keep the invariant (buffer holds rows * cols values): an empty 0 x 0 tensor.
        match &mut out.data {
            TensorData::F16(v) => v.clear(),
            TensorData::Q8_0(b) => b.clear(),
            TensorData::Q4_0(b) => b.clear(),
        }
        return r;
    }
    out.rows = rows;
    out.cols = cols;
    Ok(())
}

/// Quantises `src` into `data`, switching its variant to `precision` if needed.
fn encode_data(precision: Precision, src: &[f32], data: &mut TensorData) -> Result<()> {
    let n = src.len();
    match precision {
        Precision::F16 => {
            if !matches!(*data, TensorData::F16(_)) {
                *data = TensorData::F16(Vec::new());
            }
            if let TensorData::F16(buf) = data {
                buf.resize(n, f16::ZERO);
                f32_to_f16_checked("AdaptiveQuantizer x", src, buf)?;
            }
        }
        Precision::Q8_0 => {
            if !matches!(*data, TensorData::Q8_0(_)) {
                *data = TensorData::Q8_0(Vec::new());
            }
            if let TensorData::Q8_0(b) = data {
                b.resize(n / QK8_0, BlockQ8_0::default());
                quantize_row_q8_0(src, b)?;
            }
        }
        Precision::Q4_0 => {
            if !matches!(*data, TensorData::Q4_0(_)) {
                *data = TensorData::Q4_0(Vec::new());
            }
            if let TensorData::Q4_0(b) = data {
                b.resize(n / QK4_0, BlockQ4_0::default());
                quantize_row_q4_0(src, b)?;
            }
        }
    }
    Ok(())
}

/// Converts `src` to `f16` into `dst`, refusing values that `f16` cannot hold.
///
/// # Errors
/// `NonFinite` for the first NaN or infinity, `OutOfRange` for the first finite value with
/// `|x| > f16::MAX`, whichever comes first (wrapped in [`Error::Core`]; `context` names the
/// argument). `dst` is then partly written.
///
/// # Panics
/// If `src.len() != dst.len()`.
///
/// # Performance
/// One pass: `squish_core::convert::f32_to_f16_checked_into` folds the range check into the F16C
/// conversion loop; only when it sees a magnitude at or above `f16::MAX` is the input inspected
/// again.
pub(crate) fn f32_to_f16_checked(
    context: &'static str,
    src: &[f32],
    dst: &mut [f16],
) -> Result<()> {
    f32_to_f16_checked_into(context, src, dst)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};
    use squish_testkit::clock::FakeClock;
    use squish_testkit::{data, prop, rng};

    fn arr(rows: usize, cols: usize, v: Vec<f32>) -> Array2<f32> {
        Array2::from_shape_vec((rows, cols), v).expect("shape")
    }

    #[test]
    fn f16_is_bit_exact_with_half() {
        let x = data::normal_vec(&mut rng(1), 8 * 40, 0.0, 100.0);
        let a = arr(8, 40, x.clone());
        let q = QuantizedTensor::quantize(Precision::F16, &a).unwrap();
        let TensorData::F16(h) = q.data() else {
            panic!("f16 expected")
        };
        for (v, h) in x.iter().zip(h) {
            assert_eq!(h.to_bits(), f16::from_f32(*v).to_bits());
        }
        let y = q.dequantize();
        for (v, y) in x.iter().zip(&y) {
            assert_eq!(*y, f16::from_f32(*v).to_f32());
        }
    }

    #[test]
    fn f16_overflow_and_non_finite_are_errors() {
        let mut x = vec![1.0f32; 64];
        x[5] = 65504.0; // f16::MAX itself is fine
        assert!(QuantizedTensor::quantize(Precision::F16, &arr(1, 64, x.clone())).is_ok());
        x[7] = -65505.0; // rounds to -65504 in f16, but is beyond f16::MAX
        let e = QuantizedTensor::quantize(Precision::F16, &arr(1, 64, x.clone())).unwrap_err();
        insta::assert_snapshot!(e, @"value out of range in AdaptiveQuantizer x: element 7 is -65505");
        x[3] = 1e6;
        let e = QuantizedTensor::quantize(Precision::F16, &arr(1, 64, x.clone())).unwrap_err();
        assert!(matches!(
            e,
            Error::Core(squish_core::Error::OutOfRange { index: 3, .. })
        ));
        x[1] = f32::NAN;
        let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).unwrap();
        let mut out =
            QuantizedTensor::quantize(Precision::F16, &arr(2, 32, vec![1.0; 64])).unwrap();
        assert!(aq.quantize_into(&arr(1, 64, x.clone()), &mut out).is_err());
        assert_eq!((out.rows(), out.cols(), out.payload_bytes()), (0, 0, 0));
        let e = QuantizedTensor::quantize(Precision::F16, &arr(1, 64, x.clone())).unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in AdaptiveQuantizer x: element 1 is NaN");
        for p in [Precision::Q8_0, Precision::Q4_0] {
            let e = QuantizedTensor::quantize(p, &arr(1, 64, x.clone())).unwrap_err();
            assert!(matches!(
                e,
                Error::Core(squish_core::Error::NonFinite { index: 1, .. })
            ));
        }
        let mut y = vec![0.0f32; 64];
        y[40] = f32::NEG_INFINITY;
        for p in [Precision::F16, Precision::Q8_0, Precision::Q4_0] {
            let e = QuantizedTensor::quantize(p, &arr(2, 32, y.clone())).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Core(squish_core::Error::NonFinite { index: 40, .. })
                ),
                "{p:?}: {e}"
            );
        }
    }

    #[test]
    fn block_formats_need_cols_multiple_of_32() {
        let e = QuantizedTensor::quantize(Precision::Q4_0, &Array2::zeros((2, 48))).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in QuantizedTensor cols: expected a multiple of 32 for Q4_0 blocks, got 48");
        assert!(QuantizedTensor::quantize(Precision::F16, &Array2::zeros((2, 48))).is_ok());
    }

    #[test]
    fn exact_sizes() {
        let x = Array2::from_elem((128, 256), 1.0f32);
        let n = 128 * 256;
        for (p, bytes) in [
            (Precision::F16, 2 * n),
            (Precision::Q8_0, n / 32 * 34),
            (Precision::Q4_0, n / 32 * 18),
        ] {
            let q = QuantizedTensor::quantize(p, &x).unwrap();
            assert_eq!(q.payload_bytes(), bytes);
            assert_eq!(p.payload_bytes(n).unwrap(), bytes);
            assert_eq!(q.bytes_held(), bytes + TENSOR_METADATA_BYTES);
            assert_eq!(bytes as f64 * 8.0 / n as f64, p.bits_per_value());
        }
    }

    /// Oracle: GGML's per-block bounds, computed in f64 from the data and the stored `f16`
    /// scale `d` (the format defines it; nothing else of the kernel is trusted).
    ///
    /// - `Q8_0`: |err| <= d / 2, plus the `f16` rounding of d: at most 128 |d - amax / 127|
    ///   (127 code steps and the half step).
    /// - `Q4_0`: with `max` the first value of largest magnitude, the ideal scale is
    ///   `δ = max / -8` and the ideal code of `x` is `t = x / δ + 8`, in `[0, 16]`. The code is
    ///   `t` rounded, so |err| <= |δ| / 2, except that GGML clamps code 16 to 15: an element
    ///   with `t > 15.5` (opposite sign to `max`, magnitude above 15/16 of amax) may be off by up
    ///   to |δ|. Reconstructing with `d` instead of δ adds at most 8 |d - δ| (|code - 8| <= 8),
    ///   and |δ| <= |d| + |d - δ|, so: |err| <= k |d| + 9 |d - δ| with k = 1/2, or k = 1 where
    ///   `t > 15.5`. The kernel evaluates `x * (1 / δ)` in f32, which may send a value within
    ///   a few f32 ulps of a half step to the other code: a slack of 1e-4 |δ| covers it.
    #[test]
    fn block_error_bounds() {
        prop::check("aq_block_error_bounds", 32, |r| {
            use rand::RngExt;
            let rows = 1 + r.random_range(0..4usize);
            let mut x = data::normal_vec(r, rows * 64, 0.0, 3.0);
            // In half of the blocks, put a value of the opposite sign near the extreme, so that
            // ideal Q4_0 codes land on both sides of 15.5 (the clamped region).
            for xb in x.chunks_mut(32) {
                if r.random::<bool>() {
                    let (i, &m) = xb.iter().enumerate().fold((0, &0.0f32), |a, b| {
                        if b.1.abs() > a.1.abs() { b } else { a }
                    });
                    let j = (i + 1 + r.random_range(0..31usize)) % 32;
                    xb[j] = -m * r.random_range(0.9f32..1.0);
                }
            }
            let a = arr(rows, 64, x.clone());
            for p in [Precision::Q8_0, Precision::Q4_0] {
                let q = QuantizedTensor::quantize(p, &a).unwrap();
                let y = q.dequantize();
                for (b, (xb, yb)) in x
                    .chunks(32)
                    .zip(y.as_slice().unwrap().chunks(32))
                    .enumerate()
                {
                    let amax = xb.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
                    // The first value of largest magnitude (GGML's `max`), in f64.
                    let max = xb
                        .iter()
                        .map(|&v| f64::from(v))
                        .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
                    for (u, v) in xb.iter().zip(yb) {
                        let (u, v) = (f64::from(*u), f64::from(*v));
                        let (bound, slack) = match q.data() {
                            TensorData::Q8_0(bl) => {
                                let d = f64::from(bl[b].d.to_f32());
                                (d / 2.0 + 128.0 * (d - amax / 127.0).abs(), 1e-6)
                            }
                            TensorData::Q4_0(bl) => {
                                let d = f64::from(bl[b].d.to_f32());
                                let ideal = max / -8.0;
                                // All-zero block: δ = 0, every code reconstructs 0 exactly.
                                let t = if ideal == 0.0 { 8.0 } else { u / ideal + 8.0 };
                                let k = if t > 15.5 { 1.0 } else { 0.5 };
                                (k * d.abs() + 9.0 * (d - ideal).abs(), 1e-4 * ideal.abs())
                            }
                            TensorData::F16(_) => unreachable!(),
                        };
                        let e = (u - v).abs();
                        assert!(
                            e <= bound + slack,
                            "{p:?} block {b}: x = {u}, y = {v}: {e} > {bound}"
                        );
                    }
                }
            }
        });
    }

    /// Oracle, by hand: a block whose first extreme is 8 has `d = 8 / -8 = -1` (exact in
    /// `f16`), so `x` gets code `round(8 - x)` and reconstructs as `(code - 8) * -1 = x`
    /// rounded, except that code 16 is clamped to 15 (reconstructing -7).
    #[test]
    fn q4_0_clamps_only_the_opposite_extreme() {
        let mut x = vec![0.0f32; 32];
        x[..6].copy_from_slice(&[8.0, -8.0, -7.625, -7.375, 7.625, 0.25]);
        let q = QuantizedTensor::quantize(Precision::Q4_0, &arr(1, 32, x)).unwrap();
        let TensorData::Q4_0(b) = q.data() else {
            panic!("Q4_0 expected")
        };
        assert_eq!(b[0].d.to_f32(), -1.0);
        let y = q.dequantize();
        // -8 and -7.625 would need code 16 (t = 16, 15.625): clamped to 15, so both give -7
        // (errors 1 = |d| and 0.625 > |d| / 2); -7.375 has t = 15.375 and rounds to 15 (error
        // 0.375); 7.625 rounds to 8 (t = 0.375, code 0); 0.25 rounds to 0 (t = 7.75, code 8).
        assert_eq!(
            y.as_slice().unwrap()[..6],
            [8.0, -7.0, -7.0, -7.0, 8.0, 0.0]
        );
    }

    #[test]
    fn quantize_of_dequantize_is_identity() {
        prop::check("aq_requantize_identity", 16, |r| {
            let x = data::normal_vec(r, 4 * 96, 0.0, 2.0);
            let a = arr(4, 96, x);
            for p in [Precision::F16, Precision::Q8_0, Precision::Q4_0] {
                let q = QuantizedTensor::quantize(p, &a).unwrap();
                let again = QuantizedTensor::quantize(p, &q.dequantize()).unwrap();
                assert_eq!(again, q, "{p:?}");
            }
        });
    }

    #[test]
    fn one_outlier_block_formats_beat_a_per_tensor_scale() {
        let mut x = data::normal_vec(&mut rng(3), 16 * 256, 0.0, 1.0);
        x[1000] = 200.0;
        let a = arr(16, 256, x.clone());
        // The seed's per-tensor symmetric scheme, as an f64 oracle.
        let amax = x.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let per_tensor_mse = |levels: f64| {
            let s = amax / levels;
            x.iter()
                .map(|&v| {
                    let v = f64::from(v);
                    let e = v - (v / s).round().clamp(-levels, levels) * s;
                    e * e
                })
                .sum::<f64>()
                / x.len() as f64
        };
        for (p, levels) in [(Precision::Q8_0, 127.0), (Precision::Q4_0, 7.0)] {
            let y = QuantizedTensor::quantize(p, &a).unwrap().dequantize();
            let mse = x
                .iter()
                .zip(&y)
                .map(|(u, v)| (f64::from(*u) - f64::from(*v)).powi(2))
                .sum::<f64>()
                / x.len() as f64;
            let base = per_tensor_mse(levels);
            assert!(mse * 10.0 < base, "{p:?}: block {mse} vs per-tensor {base}");
        }
    }

    #[test]
    fn from_parts_checks_agreement_and_dequantize_into_any_layout() {
        let x = data::normal_vec(&mut rng(4), 3 * 64, 0.0, 1.0);
        let a = arr(3, 64, x);
        for p in [Precision::F16, Precision::Q8_0, Precision::Q4_0] {
            let q = QuantizedTensor::quantize(p, &a).unwrap();
            let (r, c, d) = q.clone().into_parts();
            assert_eq!(QuantizedTensor::from_parts(r, c, d.clone()).unwrap(), q);
            let e = QuantizedTensor::from_parts(2, 64, d).unwrap_err();
            assert!(matches!(e, Error::Shape(_)), "{e}");
            // Column-major output and transposed (non-contiguous) input give the same values.
            let mut f = Array2::zeros((3, 64).f());
            q.dequantize_into(&mut f).unwrap();
            assert_eq!(f, q.dequantize());
            let t = a.t().to_owned();
            let q2 = QuantizedTensor::quantize(p, &t.t()).unwrap();
            assert_eq!(q2, q);
            let mut wrong = Array2::zeros((64, 3));
            assert!(matches!(
                q.dequantize_into(&mut wrong),
                Err(Error::Shape(_))
            ));
        }
        let e =
            QuantizedTensor::from_parts(1, 32, TensorData::F16(vec![f16::ZERO; 31])).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in QuantizedTensor::from_parts data: expected 1 x 32 = 32 values, got 31 values");
    }

    /// Oracle: the format's sizes (2 bytes per `f16`, 34 / 18 bytes per block of 32); a
    /// partial block or a byte count beyond `usize` is a `Shape` error, not a panic.
    #[test]
    fn precision_payload_bytes_rejects_partial_blocks_and_overflow() {
        assert_eq!(Precision::F16.payload_bytes(0).unwrap(), 0);
        assert_eq!(Precision::F16.payload_bytes(33).unwrap(), 66);
        assert_eq!(Precision::Q8_0.payload_bytes(0).unwrap(), 0);
        assert_eq!(Precision::Q8_0.payload_bytes(96).unwrap(), 3 * 34);
        assert_eq!(Precision::Q4_0.payload_bytes(32).unwrap(), 18);
        for n in [1, 31, 33, 48, usize::MAX] {
            for p in [Precision::Q8_0, Precision::Q4_0] {
                let e = p.payload_bytes(n).unwrap_err();
                assert!(matches!(e, Error::Shape(_)), "{p:?} {n}: {e}");
            }
        }
        let e = Precision::Q8_0.payload_bytes(48).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in Precision::payload_bytes n: expected a multiple of 32 values for Q8_0 blocks, got 48 values");
        // Largest n that still fits: 2 * (usize::MAX / 2) = usize::MAX - 1.
        assert_eq!(
            Precision::F16.payload_bytes(usize::MAX / 2).unwrap(),
            usize::MAX - 1
        );
        let e = Precision::F16
            .payload_bytes(usize::MAX / 2 + 1)
            .unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e}");
        // usize::MAX / 32 blocks: 18 bytes per 32 values fit, 34 bytes per 32 values do not.
        let blocks = usize::MAX / 32;
        assert_eq!(
            Precision::Q4_0.payload_bytes(blocks * 32).unwrap(),
            blocks * 18
        );
        let e = Precision::Q8_0.payload_bytes(blocks * 32).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e}");
    }

    /// A tensor from parts must be as valid as one from `quantize`: a NaN or infinite `f16`
    /// value or block scale is a `NonFinite` error naming its position; finite extremes
    /// (`f16::MAX`, subnormals, negative zero) are accepted.
    #[test]
    fn from_parts_rejects_non_finite_values_and_scales() {
        let nf = |e: Error| match e {
            Error::Core(squish_core::Error::NonFinite { index, value, .. }) => (index, value),
            other => panic!("NonFinite expected, got {other:?}"),
        };
        let mut v = vec![f16::ONE; 64];
        v[0] = f16::MAX;
        v[1] = f16::MIN;
        v[2] = f16::from_bits(1); // smallest subnormal
        v[3] = f16::NEG_ZERO;
        assert!(QuantizedTensor::from_parts(2, 32, TensorData::F16(v.clone())).is_ok());
        for (i, bad) in [(37, f16::NAN), (5, f16::INFINITY), (63, f16::NEG_INFINITY)] {
            let mut w = v.clone();
            w[i] = bad;
            let e = QuantizedTensor::from_parts(2, 32, TensorData::F16(w)).unwrap_err();
            let (index, value) = nf(e);
            assert_eq!(index, i);
            assert_eq!(value.to_bits(), bad.to_f32().to_bits());
        }
        let mut w = v.clone();
        w[40] = f16::NAN;
        w[50] = f16::INFINITY; // only the first is reported
        let e = QuantizedTensor::from_parts(2, 32, TensorData::F16(w)).unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in QuantizedTensor::from_parts f16 values: element 40 is NaN");

        let a = arr(2, 64, data::normal_vec(&mut rng(6), 128, 0.0, 1.0));
        for p in [Precision::Q8_0, Precision::Q4_0] {
            let (r, c, d) = QuantizedTensor::quantize(p, &a).unwrap().into_parts();
            let with_scale = |blk: usize, s: f16| {
                let mut d = d.clone();
                match &mut d {
                    TensorData::Q8_0(b) => b[blk].d = s,
                    TensorData::Q4_0(b) => b[blk].d = s,
                    TensorData::F16(_) => unreachable!(),
                }
                QuantizedTensor::from_parts(r, c, d)
            };
            for s in [f16::MAX, f16::from_bits(1), f16::NEG_ZERO, f16::ZERO] {
                assert!(with_scale(1, s).is_ok(), "{p:?} scale {s}");
            }
            for (blk, s) in [(0, f16::NAN), (2, f16::INFINITY), (3, f16::NEG_INFINITY)] {
                let (index, value) = nf(with_scale(blk, s).unwrap_err());
                assert_eq!(index, blk, "{p:?}");
                assert_eq!(value.to_bits(), s.to_f32().to_bits(), "{p:?}");
            }
            let e = with_scale(3, f16::INFINITY).unwrap_err();
            assert_eq!(
                e.to_string(),
                "non-finite value in QuantizedTensor::from_parts block scales: element 3 is inf"
            );
        }
    }

    #[test]
    fn config_validation() {
        assert!(AdaptiveQuantizerConfig::default().validate().is_ok());
        let bad = |f: fn(&mut AdaptiveQuantizerConfig)| {
            let mut c = AdaptiveQuantizerConfig::default();
            f(&mut c);
            AdaptiveQuantizer::new(c).unwrap_err().to_string()
        };
        insta::assert_snapshot!(bad(|c| c.int8_enter = f64::NAN), @"invalid AdaptiveQuantizer.int8_enter: must be in [0, 1], got NaN");
        insta::assert_snapshot!(bad(|c| c.int8_exit = 0.8), @"invalid AdaptiveQuantizer.int8_exit: must be < int8_enter (0.75), got 0.8");
        insta::assert_snapshot!(bad(|c| c.int4_enter = 0.7), @"invalid AdaptiveQuantizer.int4_enter: must be > int8_enter (0.75), got 0.7");
        insta::assert_snapshot!(bad(|c| c.int4_exit = 0.95), @"invalid AdaptiveQuantizer.int4_exit: must be in (int8_exit, int4_enter) = (0.65, 0.9), got 0.95");
        insta::assert_snapshot!(bad(|c| c.int4_exit = 1.5), @"invalid AdaptiveQuantizer.int4_exit: must be in [0, 1], got 1.5");
        let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).unwrap();
        let e = aq.update(f64::NAN, Instant::now()).unwrap_err();
        insta::assert_snapshot!(e, @"invalid AdaptiveQuantizer.pressure: must be in [0, 1], got NaN");
        assert!(aq.update(1.01, Instant::now()).is_err());
        assert_eq!(aq.transitions(), 0);
    }

    /// NaN, infinities and finite values outside `[0, 1]` are all a `Config` error on
    /// `pressure` that leaves the state (level, transitions, dwell clock) untouched; the
    /// interval's ends (and -0.0) are accepted.
    #[test]
    fn update_rejects_bad_pressure_and_keeps_state() {
        let clock = FakeClock::new();
        let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).unwrap();
        assert_eq!(aq.update(0.95, clock.now()).unwrap(), Precision::Q4_0);
        let msg = |p: f64, aq: &mut AdaptiveQuantizer| {
            let e = aq.update(p, clock.now()).unwrap_err();
            assert!(
                matches!(&e, Error::Config(c) if c.component == "AdaptiveQuantizer" && c.field == "pressure"),
                "{e:?}"
            );
            e.to_string()
        };
        insta::assert_snapshot!(msg(f64::NAN, &mut aq), @"invalid AdaptiveQuantizer.pressure: must be in [0, 1], got NaN");
        insta::assert_snapshot!(msg(f64::INFINITY, &mut aq), @"invalid AdaptiveQuantizer.pressure: must be in [0, 1], got inf");
        insta::assert_snapshot!(msg(f64::NEG_INFINITY, &mut aq), @"invalid AdaptiveQuantizer.pressure: must be in [0, 1], got -inf");
        insta::assert_snapshot!(msg(-0.01, &mut aq), @"invalid AdaptiveQuantizer.pressure: must be in [0, 1], got -0.01");
        insta::assert_snapshot!(msg(1.0 + f64::EPSILON, &mut aq), @"invalid AdaptiveQuantizer.pressure: must be in [0, 1], got 1.0000000000000002");
        assert_eq!((aq.precision(), aq.transitions()), (Precision::Q4_0, 1));
        // The rejected updates did not restart the dwell: one dwell after entering Q4_0, a
        // valid low pressure raises precision at once.
        clock.advance(aq.config().min_dwell);
        msg(f64::NAN, &mut aq);
        assert_eq!(aq.update(0.0, clock.now()).unwrap(), Precision::F16);
        assert_eq!(aq.update(-0.0, clock.now()).unwrap(), Precision::F16);
        assert_eq!(aq.update(1.0, clock.now()).unwrap(), Precision::Q4_0);
        assert_eq!(aq.transitions(), 3);
    }

    #[test]
    fn state_machine_levels() {
        let clock = FakeClock::new();
        let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).unwrap();
        let dwell = aq.config().min_dwell;
        let mut step = |p: f64, dt: Duration| {
            clock.advance(dt);
            aq.update(p, clock.now()).unwrap()
        };
        let z = Duration::ZERO;
        assert_eq!(step(0.5, z), Precision::F16);
        assert_eq!(step(0.8, z), Precision::Q8_0);
        assert_eq!(step(0.92, z), Precision::Q4_0);
        assert_eq!(step(0.85, dwell), Precision::Q4_0); // inside the INT4 band
        assert_eq!(step(0.7, z), Precision::Q8_0); // below int4_exit after the dwell
        assert_eq!(step(0.5, z), Precision::Q8_0); // dwell not yet over
        assert_eq!(step(0.5, dwell), Precision::F16);
        assert_eq!(step(0.95, z), Precision::Q4_0); // straight to INT4
        assert_eq!(step(0.1, dwell), Precision::F16); // straight back
    }

    /// Oracle: an independent formulation of the policy (escalate to the highest level whose
    /// enter threshold is reached; otherwise keep a level while the pressure is at or above
    /// its exit threshold; otherwise fall to the highest level whose exit is still met, once
    /// the dwell has passed), replayed on random pressure and time sequences.
    #[test]
    fn state_machine_matches_a_reference() {
        prop::check("aq_state_machine_reference", 200, |r| {
            use rand::RngExt;
            let cfg = AdaptiveQuantizerConfig {
                min_dwell: Duration::from_millis(r.random_range(0..200)),
                ..AdaptiveQuantizerConfig::default()
            };
            let enter = [0.0, cfg.int8_enter, cfg.int4_enter];
            let exit = [f64::NEG_INFINITY, cfg.int8_exit, cfg.int4_exit];
            let levels = [Precision::F16, Precision::Q8_0, Precision::Q4_0];
            let clock = FakeClock::new();
            let mut aq = AdaptiveQuantizer::new(cfg.clone()).unwrap();
            let (mut level, mut since): (usize, Option<Duration>) = (0, None);
            for _ in 0..300 {
                clock.advance(Duration::from_millis(r.random_range(0..100)));
                let p = r.random_range(0.0..=1.0);
                let esc = (0..3).rev().find(|&i| p >= enter[i]).unwrap();
                let now = clock.elapsed();
                if esc > level {
                    level = esc;
                    since = Some(now);
                } else if p < exit[level] && since.is_none_or(|t| now - t >= cfg.min_dwell) {
                    level = (0..level).rev().find(|&i| p >= exit[i]).unwrap();
                    since = Some(now);
                }
                assert_eq!(aq.update(p, clock.now()).unwrap(), levels[level], "p = {p}");
            }
        });
    }

    #[test]
    fn int4_falls_back_to_int8_between_the_exits() {
        let clock = FakeClock::new();
        let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).unwrap();
        assert_eq!(aq.update(0.95, clock.now()).unwrap(), Precision::Q4_0);
        clock.advance(aq.config().min_dwell);
        // Above INT8's enter threshold but below INT4's exit: back to INT8, not F16.
        assert_eq!(aq.update(0.77, clock.now()).unwrap(), Precision::Q8_0);
    }

    /// Oracle: pressure oscillating strictly inside a hysteresis band (between exit and enter)
    /// never moves a level that the band keeps, and moves a level that the band leaves exactly
    /// once, to the band's level, for any dwell and any timing. Derived from the thresholds:
    ///
    /// - INT8 band `(int8_exit, int8_enter)`: `F16` stays (below `int8_enter`) and `Q8_0`
    ///   stays (at or above `int8_exit`); `Q4_0` is below `int4_exit`, so it is raised to
    ///   `Q8_0` at the first update at least `min_dwell` after it was entered.
    /// - INT4 band `(int4_exit, int4_enter)`: `Q8_0` and `Q4_0` stay; `F16` is at or above
    ///   `int8_enter`, so it drops to `Q8_0` at the first update (lowering is immediate).
    #[test]
    fn oscillation_inside_a_band_switches_only_out_of_a_level_it_leaves() {
        prop::check("aq_band_oscillation", 64, |r| {
            use rand::RngExt;
            let cfg = AdaptiveQuantizerConfig {
                min_dwell: Duration::from_millis(r.random_range(0..50)),
                ..AdaptiveQuantizerConfig::default()
            };
            let int8_band = r.random::<bool>();
            let (lo, hi) = if int8_band {
                (cfg.int8_exit, cfg.int8_enter)
            } else {
                (cfg.int4_exit, cfg.int4_enter)
            };
            let start = [Precision::F16, Precision::Q8_0, Precision::Q4_0][r.random_range(0..3)];
            let clock = FakeClock::new();
            clock.advance(Duration::from_millis(r.random_range(0..100)));
            let dwell = cfg.min_dwell;
            let mut aq = AdaptiveQuantizer::new(cfg).unwrap();
            // Reach the start level: F16 is where a new quantizer is; 0.8 and 0.95 lie above
            // INT8's and INT4's enter thresholds.
            let entered = clock.elapsed();
            match start {
                Precision::F16 => {}
                Precision::Q8_0 => assert_eq!(aq.update(0.8, clock.now()).unwrap(), start),
                Precision::Q4_0 => assert_eq!(aq.update(0.95, clock.now()).unwrap(), start),
            }
            let before = aq.transitions();
            // The level the band moves `start` to, if it moves it, and when.
            let leaves = match (int8_band, start) {
                (true, Precision::Q4_0) | (false, Precision::F16) => Some(Precision::Q8_0),
                _ => None,
            };
            let mut switched = false;
            for _ in 0..500 {
                clock.advance(Duration::from_millis(r.random_range(0..100)));
                let p = lo + (hi - lo) * r.random_range(0.001..0.999);
                if let Some(to) = leaves {
                    // Lowering (F16 -> Q8_0) needs no dwell; raising waits `dwell` since
                    // `entered` (no change happens in between).
                    switched |= to > start || clock.elapsed() - entered >= dwell;
                }
                let want = if switched { Precision::Q8_0 } else { start };
                assert_eq!(aq.update(p, clock.now()).unwrap(), want, "p = {p}");
            }
            let moved = aq.transitions() - before;
            match leaves {
                None => assert_eq!(moved, 0, "{start:?} is settled in [{lo}, {hi}]"),
                Some(_) => {
                    assert!(moved <= 1, "{start:?} in [{lo}, {hi}]: {moved} switches");
                    assert_eq!(moved, u64::from(switched));
                }
            }
        });
    }

    /// With the default thresholds, a run that starts settled sees no switch at all, and one
    /// that starts from a level the band leaves sees exactly one, to the right level.
    #[test]
    fn oscillation_inside_a_band_fixed_runs() {
        let run = |setup: &[f64], band: (f64, f64)| {
            let clock = FakeClock::new();
            let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).unwrap();
            for &p in setup {
                aq.update(p, clock.now()).unwrap();
            }
            let before = aq.transitions();
            let mut seen = vec![aq.precision()];
            for i in 0..200 {
                // 10 updates per dwell period, alternating near both edges of the band.
                clock.advance(aq.config().min_dwell / 10);
                let p = if i % 2 == 0 {
                    band.0 + 1e-3
                } else {
                    band.1 - 1e-3
                };
                let level = aq.update(p, clock.now()).unwrap();
                if seen.last() != Some(&level) {
                    seen.push(level);
                }
            }
            (aq.transitions() - before, seen)
        };
        let int8 = (0.65, 0.75);
        let int4 = (0.80, 0.90);
        use Precision::{F16, Q4_0, Q8_0};
        assert_eq!(run(&[], int8), (0, vec![F16]));
        assert_eq!(run(&[0.8], int8), (0, vec![Q8_0]));
        assert_eq!(run(&[0.8], int4), (0, vec![Q8_0]));
        assert_eq!(run(&[0.95], int4), (0, vec![Q4_0]));
        assert_eq!(run(&[0.95], int8), (1, vec![Q4_0, Q8_0]));
        assert_eq!(run(&[], int4), (1, vec![F16, Q8_0]));
    }

    /// Oscillation across a whole band switches at most twice per dwell period.
    #[test]
    fn oscillation_across_the_band_is_rate_limited() {
        let clock = FakeClock::new();
        let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).unwrap();
        let dwell = aq.config().min_dwell;
        for i in 0..1000 {
            clock.advance(dwell / 100);
            let p = if i % 2 == 0 { 0.95 } else { 0.05 };
            aq.update(p, clock.now()).unwrap();
        }
        // 1000 updates over 10 dwell periods.
        assert!(aq.transitions() <= 2 * 10 + 1, "{}", aq.transitions());
        assert!(aq.transitions() >= 10);
    }

    #[test]
    fn quantizer_reuses_buffers_and_follows_the_level() {
        let a = arr(2, 64, data::normal_vec(&mut rng(5), 128, 0.0, 1.0));
        let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).unwrap();
        let now = Instant::now();
        let mut out = QuantizedTensor::default();
        for (p, want) in [
            (0.5, Precision::F16),
            (0.8, Precision::Q8_0),
            (0.92, Precision::Q4_0),
        ] {
            aq.update(p, now).unwrap();
            aq.quantize_into(&a, &mut out).unwrap();
            assert_eq!(out.precision(), want);
            assert_eq!(out, QuantizedTensor::quantize(want, &a).unwrap());
        }
    }
}
