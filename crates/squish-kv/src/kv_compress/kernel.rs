//! The storage of [`KvCompressor`](super::KvCompressor)'s quantised tokens: squish-core's
//! grouped layout in growable buffers, filled and read through
//! [`squish_core::quant::quantize_grouped_slices`] /
//! [`dequantize_grouped_slices`](squish_core::quant::dequantize_grouped_slices) (bit-identical
//! to [`squish_core::quant::quantize_grouped`], AVX2 when the CPU has it).
//!
//! Rows are byte-aligned (`head_dim % 4 == 0`) and every write quantises whole groups, so the
//! codes, scales and zero-points of `group_size` more tokens are exactly the bytes and groups
//! that quantising the whole sequence would append.

use squish_core::quant::{
    GroupAxis, GroupedQuantConfig, dequantize_grouped_slices, quantize_grouped_slices,
};

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

    /// As [`read`](Self::read) for per-column groups (`cfg.axis` is
    /// [`GroupAxis::AlongColumn`]) of `lens[i]` rows each, as eviction leaves them: each
    /// group decoded with its own scales and zero-points (the same `zero + code * scale` per
    /// element, so the same bits as before the eviction).
    pub(super) fn read_ragged(
        &self,
        cols: usize,
        cfg: &GroupedQuantConfig,
        lens: &[u32],
        out: &mut [f32],
    ) {
        let row_bytes = cfg.bits.packed_len(cols);
        let (mut c, mut o) = (0, 0);
        for ((&len, s), z) in lens
            .iter()
            .zip(self.scales.chunks_exact(cols))
            .zip(self.zeros.chunks_exact(cols))
        {
            let len = len as usize;
            let g = GroupedQuantConfig::new(cfg.bits, len, GroupAxis::AlongColumn);
            let (cb, ob) = (len * row_bytes, len * cols);
            dequantize_grouped_slices(&self.codes[c..c + cb], s, z, cols, &g, &mut out[o..o + ob]);
            (c, o) = (c + cb, o + ob);
        }
    }

    /// Keeps the quantised rows `rows` (ascending) of per-row groups (`params_per_row` scales
    /// and zero-points per row, `row_bytes` of codes), compacting the buffers in place.
    pub(super) fn retain_rows(&mut self, rows: &[u32], row_bytes: usize, params_per_row: usize) {
        let rows = || rows.iter().map(|&r| r as usize);
        compact(&mut self.codes, row_bytes, rows());
        compact(&mut self.scales, params_per_row, rows());
        compact(&mut self.zeros, params_per_row, rows());
    }

    /// Keeps the quantised rows `rows` (ascending) of per-column groups of `lens[i]` rows each
    /// (`cols` scales and zero-points per group, `row_bytes` of codes per row): compacts the
    /// codes, shortens each group to the rows it keeps and removes the groups left empty, with
    /// their parameters.
    pub(super) fn retain_column_rows(
        &mut self,
        rows: &[u32],
        row_bytes: usize,
        cols: usize,
        lens: &mut Vec<u32>,
    ) {
        compact(&mut self.codes, row_bytes, rows.iter().map(|&r| r as usize));
        let (mut start, mut next, mut out) = (0usize, 0usize, 0usize);
        for g in 0..lens.len() {
            let end = start + lens[g] as usize;
            let first = next;
            while next < rows.len() && (rows[next] as usize) < end {
                next += 1;
            }
            if next > first {
                self.scales
                    .copy_within(g * cols..(g + 1) * cols, out * cols);
                self.zeros.copy_within(g * cols..(g + 1) * cols, out * cols);
                lens[out] = (next - first) as u32;
                out += 1;
            }
            start = end;
        }
        lens.truncate(out);
        self.scales.truncate(out * cols);
        self.zeros.truncate(out * cols);
    }
}

/// Keeps the rows `rows` (ascending, in bounds) of a row-major buffer of `width` elements per
/// row, moving them to the front in order, and drops the rest. Runs of consecutive rows move
/// with one copy (a rolling window keeps one long run).
pub(super) fn compact<T: Copy>(buf: &mut Vec<T>, width: usize, rows: impl Iterator<Item = usize>) {
    // `n` rows kept so far; the pending run is rows `start..end`, bound for row `n - len`.
    let (mut n, mut start, mut end) = (0, 0, 0);
    let flush = |start: usize, end: usize, to: usize, buf: &mut Vec<T>| {
        if start != to && end > start {
            buf.copy_within(start * width..end * width, to * width);
        }
    };
    for r in rows {
        if r != end {
            flush(start, end, n - (end - start), buf);
            start = r;
        }
        end = r + 1;
        n += 1;
    }
    flush(start, end, n - (end - start), buf);
    buf.truncate(n * width);
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
