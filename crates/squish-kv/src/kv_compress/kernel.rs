//! The storage of [`KvCompressor`](super::KvCompressor)'s quantised tokens: squish-core's
//! grouped layout in growable buffers, filled and read through
//! [`squish_core::quant::quantize_grouped_slices`] /
//! [`dequantize_grouped_slices`](squish_core::quant::dequantize_grouped_slices) (bit-identical
//! to [`squish_core::quant::quantize_grouped`], AVX2 when the CPU has it).
//!
//! Rows are byte-aligned (`head_dim % 4 == 0`) and every write quantises whole groups, so the
//! codes, scales and zero-points of `group_size` more tokens are exactly the bytes and groups
//! that quantising the whole sequence would append.

use squish_core::quant::{GroupedQuantConfig, dequantize_grouped_slices, quantize_grouped_slices};

/// Something the quantiser refused: the caller reports the right error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Anomaly {
    /// A non-finite value, at this index of the kernel's input slice.
    NonFinite(usize),
    /// A group's range (or its reconstruction) overflows `f32`; index of the group's maximum.
    Range(usize),
}

/// Buffer lengths of a [`Groups`]: codes, scales, zero-points.
pub(super) type Lens = (usize, usize, usize);

/// Packed codes with one scale and zero-point per group (squish-core's grouped layout).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Groups {
    /// Packed codes, row-major.
    pub(super) codes: Vec<u8>,
    /// One scale per group.
    pub(super) scales: Vec<f32>,
    /// One zero-point per group.
    pub(super) zeros: Vec<f32>,
}

impl Groups {
    pub(super) fn clear(&mut self) {
        self.codes.clear();
        self.scales.clear();
        self.zeros.clear();
    }

    /// Bytes held: codes plus 4 per scale and per zero-point.
    pub(super) fn bytes(&self) -> usize {
        self.codes.len() + size_of::<f32>() * (self.scales.len() + self.zeros.len())
    }

    /// Truncates the buffers to lengths `at` (earlier [`lens`](Self::lens)): undoes the
    /// writes made since.
    pub(super) fn truncate(&mut self, at: Lens) {
        self.codes.truncate(at.0);
        self.scales.truncate(at.1);
        self.zeros.truncate(at.2);
    }

    /// Current buffer lengths.
    pub(super) fn lens(&self) -> Lens {
        (self.codes.len(), self.scales.len(), self.zeros.len())
    }

    /// Quantises `x` (`[rows, cols]` row-major, whole groups along `cfg.axis`, `cols % 4 == 0`)
    /// into the buffers starting at lengths `at`, which then end right after it: `at` = the
    /// current lengths appends, `(0, 0, 0)` replaces the contents (reusing the bytes already
    /// there instead of zero-filling them again). On an anomaly the buffers are truncated to
    /// `at`.
    pub(super) fn write_at(
        &mut self,
        at: Lens,
        x: &[f32],
        cols: usize,
        cfg: &GroupedQuantConfig,
    ) -> Result<(), Anomaly> {
        let groups = x.len() / cfg.group_size;
        self.codes.resize(at.0 + cfg.bits.packed_len(x.len()), 0);
        self.scales.resize(at.1 + groups, 0.0);
        self.zeros.resize(at.2 + groups, 0.0);
        if x.is_empty() {
            return Ok(());
        }
        let res = quantize_grouped_slices(
            x,
            cols,
            cfg,
            &mut self.codes[at.0..],
            &mut self.scales[at.1..],
            &mut self.zeros[at.2..],
        );
        res.map_err(|e| {
            self.truncate(at);
            anomaly(&e)
        })
    }

    /// Reconstructs the `out.len() / cols` rows held (`zero + code * scale`, bit-identical to
    /// squish-core's `dequantize_into`).
    pub(super) fn read(&self, cols: usize, cfg: &GroupedQuantConfig, out: &mut [f32]) {
        if out.is_empty() {
            return;
        }
        dequantize_grouped_slices(&self.codes, &self.scales, &self.zeros, cols, cfg, out);
    }
}

/// The anomaly behind squish-core's error (its index is into the quantised slice).
#[cold]
fn anomaly(e: &squish_core::Error) -> Anomaly {
    match *e {
        squish_core::Error::NonFinite { index, .. } => Anomaly::NonFinite(index),
        squish_core::Error::OutOfRange { index, .. } => Anomaly::Range(index),
        // Shapes and group sizes are validated before quantising; reported as a range error
        // on the first element should that ever change.
        _ => Anomaly::Range(0),
    }
}
