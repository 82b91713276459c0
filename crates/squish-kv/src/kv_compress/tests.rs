use ndarray::{Array2, Array3};
use rand::RngExt;
use squish_core::quant::{GroupAxis, GroupedQuantConfig, QuantBits, quantize_grouped};
use squish_testkit::data::{KvSpec, kv_with_outliers, normal_vec};
use squish_testkit::prop;

use super::*;

const ALL_BITS: [QuantBits; 3] = [QuantBits::B2, QuantBits::B4, QuantBits::B8];

fn key_cfg(cfg: &KvCompressorConfig) -> GroupedQuantConfig {
    match cfg.key_axis {
        GroupAxis::AlongColumn => {
            GroupedQuantConfig::new(cfg.key_bits, cfg.group_size, GroupAxis::AlongColumn)
        }
        GroupAxis::AlongRow => {
            GroupedQuantConfig::new(cfg.key_bits, cfg.value_group_size, GroupAxis::AlongRow)
        }
    }
}

fn value_cfg(cfg: &KvCompressorConfig) -> GroupedQuantConfig {
    GroupedQuantConfig::new(cfg.value_bits, cfg.value_group_size, GroupAxis::AlongRow)
}

/// Checks every head of `kv` against squish-core's `quantize_grouped` on the head's first `q`
/// rows of `k`/`v` (`[heads][n * d]` per head) and the residual against the raw rows.
fn assert_matches_oracle(kv: &CompressedKv, k: &[Vec<f32>], v: &[Vec<f32>]) {
    let cfg = kv.config();
    let d = kv.head_dim();
    for (h, s) in kv.heads.iter().enumerate() {
        let n = k[h].len() / d;
        let q = cfg.quantized_len(n);
        assert_eq!(s.qlen, q, "head {h}");
        let ko = quantize_grouped(&k[h][..q * d], q, d, &key_cfg(cfg)).unwrap();
        let vo = quantize_grouped(&v[h][..q * d], q, d, &value_cfg(cfg)).unwrap();
        assert_eq!(s.k.codes, ko.codes(), "key codes of head {h}");
        assert_eq!(s.k.scales, ko.scales(), "key scales of head {h}");
        assert_eq!(s.k.zeros, ko.zeros(), "key zeros of head {h}");
        assert_eq!(s.v.codes, vo.codes(), "value codes of head {h}");
        assert_eq!(s.v.scales, vo.scales(), "value scales of head {h}");
        assert_eq!(s.v.zeros, vo.zeros(), "value zeros of head {h}");
        assert_eq!(s.k_res, k[h][q * d..]);
        assert_eq!(s.v_res, v[h][q * d..]);
        // Decoding is bit-identical to squish-core's.
        let (mut kd, mut vd) = (vec![0.0; n * d], vec![0.0; n * d]);
        kv.decompress_head_into(h, &mut kd, &mut vd).unwrap();
        assert_eq!(kd[..q * d], ko.dequantize()[..]);
        assert_eq!(vd[..q * d], vo.dequantize()[..]);
        assert_eq!(kd[q * d..], k[h][q * d..]);
    }
}

fn split_heads(x: &[f32], heads: usize) -> Vec<Vec<f32>> {
    let per = x.len() / heads.max(1);
    (0..heads)
        .map(|h| x[h * per..(h + 1) * per].to_vec())
        .collect()
}

fn random_cfg<R: rand::Rng + ?Sized>(rng: &mut R, d: usize) -> KvCompressorConfig {
    let mut cfg = KvCompressorConfig::new(
        ALL_BITS[rng.random_range(0..3)],
        [1, 2, 3, 8, 32][rng.random_range(0..5)],
        [0, 1, 5, 16][rng.random_range(0..4)],
    );
    cfg.value_bits = ALL_BITS[rng.random_range(0..3)];
    let divisors: Vec<usize> = (1..=d / 4)
        .map(|m| 4 * m)
        .filter(|&g| d.is_multiple_of(g))
        .collect();
    cfg.value_group_size = divisors[rng.random_range(0..divisors.len())];
    if rng.random_range(0..4) == 0 {
        cfg.key_axis = GroupAxis::AlongRow;
    }
    cfg
}

/// Data with exact rounding ties, constant groups and outliers, next to plain Gaussians.
fn random_data<R: rand::Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f32> {
    match rng.random_range(0..4) {
        0 => normal_vec(rng, n, 0.0, 1.0),
        // Half-integers: with min 0 and max 2^b - 1 many codes are exact ties.
        1 => (0..n)
            .map(|_| rng.random_range(0..511) as f32 * 0.5)
            .collect(),
        2 => (0..n)
            .map(|_| {
                if rng.random_range(0..3) == 0 {
                    1.25
                } else {
                    rng.random_range(0..7) as f32 * 0.5
                }
            })
            .collect(),
        _ => (0..n)
            .map(|i| if i % 7 == 0 { 0.0 } else { 3.0 } + rng.random_range(-1.0f32..1.0) * 1e3)
            .collect(),
    }
}

#[test]
fn compress_is_bit_identical_to_squish_core() {
    prop::check("kv_compress_oracle", 200, |rng| {
        let heads = rng.random_range(1..4);
        let d = [4, 8, 12, 64, 320][rng.random_range(0..5)];
        let seq = rng.random_range(0..80);
        let cfg = random_cfg(rng, d);
        let k = random_data(rng, heads * seq * d);
        let v = random_data(rng, heads * seq * d);
        let ka = Array3::from_shape_vec((heads, seq, d), k.clone()).unwrap();
        let va = Array3::from_shape_vec((heads, seq, d), v.clone()).unwrap();
        let mut comp = KvCompressor::new(cfg).unwrap();
        let mut kv = CompressedKv::new();
        comp.compress_into(&ka, &va, None, &mut kv).unwrap();
        assert_matches_oracle(&kv, &split_heads(&k, heads), &split_heads(&v, heads));
        assert!(kv.positions(0).is_none() || heads == 0);
    });
}

#[test]
fn fast_path_agrees_on_near_ties() {
    // Values a hair off every half-integer step: the AVX2 encoder (conversion, ties to even)
    // must give the reference's codes there.
    for bits in ALL_BITS {
        let max = f32::from(bits.max_code());
        let mut x: Vec<f32> = Vec::new();
        let mut t = 0.0f32;
        while x.len() < 4096 {
            let base = (t % max) + 0.5;
            for u in [-2i32, -1, 0, 1, 2] {
                x.push(f32::from_bits((base.to_bits() as i32 + u) as u32) * 0.37);
            }
            t += 1.0;
        }
        x.truncate(4096);
        x[0] = 0.0;
        x[1] = max * 0.37;
        let cfg = KvCompressorConfig::new(bits, 64, 0);
        let arr = Array3::from_shape_vec((1, 64, 64), x.clone()).unwrap();
        let mut kv = CompressedKv::new();
        KvCompressor::new(cfg)
            .unwrap()
            .compress_into(&arr, &arr, None, &mut kv)
            .unwrap();
        assert_matches_oracle(&kv, &[x.clone()], &[x]);
    }
}

/// Flat indices into a `[rows, d]` head of each group of its first `rows` (quantised) rows, in
/// the order the groups are stored: per column, blocks of `gs` consecutive rows of one channel
/// (block-major, then channel); per row, runs of `gs` consecutive channels of one row.
fn group_members(rows: usize, d: usize, axis: GroupAxis, gs: usize) -> Vec<Vec<usize>> {
    match axis {
        GroupAxis::AlongColumn => (0..rows / gs)
            .flat_map(|b| (0..d).map(move |c| (b * gs..(b + 1) * gs).map(|t| t * d + c).collect()))
            .collect(),
        GroupAxis::AlongRow => (0..rows)
            .flat_map(|t| {
                (0..d / gs).map(move |j| (t * d + j * gs..t * d + (j + 1) * gs).collect())
            })
            .collect(),
    }
}

/// `2^-24`: the unit roundoff of `f32`.
const U: f64 = 1.0 / 16_777_216.0;

/// Checks one tensor's quantised groups against bounds derived from the input `x` alone.
///
/// Per group, in `f64`: `lo`, `hi`, and the ideal step `(hi - lo) / (2^bits - 1)` (raised to
/// `f32::MIN_POSITIVE` for a positive range below it, as squish-core documents). The stored
/// scale is `fl(fl(hi - lo) * fl(1 / (2^bits - 1)))`, three roundings, so it is within
/// `(1 + 2^-24)^3 - 1 < 2^-22` of the step relatively; the zero-point is `lo` exactly. With
/// that scale, squish-core's documented bound is `scale * (1/2 + 2^-14)` in exact arithmetic;
/// the decode `fl(zero + fl(code * scale))` (or one fused rounding) adds at most
/// `2^-24 * code * scale + 2^-24 * |result| <= 2^-24 * (|lo| + 3 * (hi - lo))`. Hence every
/// element must satisfy
/// `|x - x'| <= step * (1/2 + 2^-14) * (1 + 2^-22) + 2^-24 * (|lo| + 3 * (hi - lo))`,
/// a slack of `2^-13` relative to `step / 2` plus a few `f32` roundings of the data.
fn check_groups(
    what: &str,
    x: &[f32],
    xd: &[f32],
    groups: &[Vec<usize>],
    bits: QuantBits,
    scales: &[f32],
    zeros: &[f32],
) -> Result<(), String> {
    if scales.len() != groups.len() || zeros.len() != groups.len() {
        return Err(format!(
            "{what}: {} groups, {} scales, {} zero-points",
            groups.len(),
            scales.len(),
            zeros.len()
        ));
    }
    let max_code = f64::from(1u32 << bits.bits()) - 1.0;
    for (g, members) in groups.iter().enumerate() {
        let lo = members
            .iter()
            .map(|&i| f64::from(x[i]))
            .fold(f64::INFINITY, f64::min);
        let hi = members
            .iter()
            .map(|&i| f64::from(x[i]))
            .fold(f64::NEG_INFINITY, f64::max);
        let range = hi - lo;
        let step = if range > 0.0 {
            (range / max_code).max(f64::from(f32::MIN_POSITIVE))
        } else {
            0.0
        };
        let (scale, zero) = (f64::from(scales[g]), f64::from(zeros[g]));
        if (scale - step).abs() > step * 4.0 * U {
            return Err(format!(
                "{what} group {g}: stored scale {scale} is not the ideal step {step}"
            ));
        }
        if zero != lo {
            return Err(format!(
                "{what} group {g}: zero-point {zero} is not the minimum {lo}"
            ));
        }
        let tol = step * (0.5 + 2f64.powi(-14)) * (1.0 + 4.0 * U) + U * (lo.abs() + 3.0 * range);
        for &i in members {
            let err = (f64::from(xd[i]) - f64::from(x[i])).abs();
            if err > tol {
                return Err(format!(
                    "{what} group {g}, element {i}: {} decodes to {}, error {err} > {tol} \
                     (step {step})",
                    x[i], xd[i]
                ));
            }
        }
    }
    Ok(())
}

/// Checks every head of `kv` (compressed with `cfg`) against the input alone: head `h` held
/// `k[h]` / `v[h]` (`[n, d]` row-major), so its first `G * floor(max(0, n - R) / G)` tokens
/// are quantised within [`check_groups`]' bounds and the rest are exact.
fn check_error_bound(
    kv: &CompressedKv,
    cfg: &KvCompressorConfig,
    d: usize,
    k: &[Vec<f32>],
    v: &[Vec<f32>],
) -> Result<(), String> {
    let (g, r) = (cfg.group_size, cfg.residual);
    for (h, (kh, vh)) in k.iter().zip(v).enumerate() {
        let n = kh.len() / d;
        let q = n.saturating_sub(r) / g * g;
        if (kv.head_len(h), kv.quantized_len(h)) != (n, q) {
            return Err(format!(
                "head {h}: holds {} tokens, {} quantised; expected {n}, {q}",
                kv.head_len(h),
                kv.quantized_len(h)
            ));
        }
        let (mut kd, mut vd) = (vec![0.0; n * d], vec![0.0; n * d]);
        kv.decompress_head_into(h, &mut kd, &mut vd)
            .map_err(|e| e.to_string())?;
        let (key_axis, key_gs) = match cfg.key_axis {
            GroupAxis::AlongColumn => (GroupAxis::AlongColumn, g),
            GroupAxis::AlongRow => (GroupAxis::AlongRow, cfg.value_group_size),
        };
        let s = &kv.heads[h];
        check_groups(
            &format!("head {h} keys"),
            kh,
            &kd,
            &group_members(q, d, key_axis, key_gs),
            cfg.key_bits,
            &s.k.scales,
            &s.k.zeros,
        )?;
        check_groups(
            &format!("head {h} values"),
            vh,
            &vd,
            &group_members(q, d, GroupAxis::AlongRow, cfg.value_group_size),
            cfg.value_bits,
            &s.v.scales,
            &s.v.zeros,
        )?;
        // Residual tokens are exact (bitwise: the data is finite, so `==` is bit equality up to
        // the sign of zero, which the bit comparison catches too).
        for (what, x, xd) in [("keys", kh, &kd), ("values", vh, &vd)] {
            if let Some(i) = (q * d..n * d).find(|&i| x[i].to_bits() != xd[i].to_bits()) {
                return Err(format!(
                    "head {h} residual {what}, element {i}: {} held as {}",
                    x[i], xd[i]
                ));
            }
        }
    }
    Ok(())
}

/// Compresses `k` / `v` (`[heads, n, d]`) with `cfg`: all at once, or the first `prefill`
/// tokens then the rest appended one at a time.
fn compress_maybe_appending(
    cfg: &KvCompressorConfig,
    k: &Array3<f32>,
    v: &Array3<f32>,
    prefill: Option<usize>,
) -> CompressedKv {
    let mut comp = KvCompressor::new(cfg.clone()).unwrap();
    let mut kv = CompressedKv::new();
    let Some(p) = prefill else {
        comp.compress_into(k, v, None, &mut kv).unwrap();
        return kv;
    };
    let head = |a: &Array3<f32>| a.slice(ndarray::s![.., ..p, ..]).to_owned();
    comp.compress_into(&head(k), &head(v), None, &mut kv)
        .unwrap();
    for t in p..k.dim().1 {
        let row = |a: &Array3<f32>| a.slice(ndarray::s![.., t, ..]).to_owned();
        comp.append(&row(k), &row(v), &mut kv).unwrap();
    }
    kv
}

/// Keys with outlier channels (biased, 20x to 100x wider) or [`random_data`].
fn random_keys<R: rand::Rng + ?Sized>(rng: &mut R, heads: usize, seq: usize, d: usize) -> Vec<f32> {
    if rng.random_range(0..2) == 0 {
        let spec = KvSpec {
            heads,
            seq_len: seq,
            head_dim: d,
            outlier_channels: vec![1, d / 2, d - 1],
            outlier_scale: [20.0, 100.0][rng.random_range(0..2)],
        };
        kv_with_outliers(rng, &spec)
    } else {
        random_data(rng, heads * seq * d)
    }
}

#[test]
fn every_element_within_half_the_ideal_step() {
    prop::check("kv_compress_error_bound", 60, |rng| {
        let heads = rng.random_range(1..4);
        let d = [8, 32, 64][rng.random_range(0..3)];
        let seq = rng.random_range(0..100);
        let cfg = random_cfg(rng, d);
        let k = random_keys(rng, heads, seq, d);
        let v = random_keys(rng, heads, seq, d);
        let ka = Array3::from_shape_vec((heads, seq, d), k.clone()).unwrap();
        let va = Array3::from_shape_vec((heads, seq, d), v.clone()).unwrap();
        let prefill = (rng.random_range(0..2) == 0).then(|| rng.random_range(0..=seq));
        let kv = compress_maybe_appending(&cfg, &ka, &va, prefill);
        let (kh, vh) = (split_heads(&k, heads), split_heads(&v, heads));
        if let Err(e) = check_error_bound(&kv, &cfg, d, &kh, &vh) {
            panic!("{cfg:?}, prefill {prefill:?}: {e}");
        }
    });
}

#[test]
fn error_bound_holds_at_every_width_with_outlier_channels() {
    let (heads, seq, d) = (3, 150, 64);
    let spec = KvSpec {
        heads,
        seq_len: seq,
        head_dim: d,
        outlier_channels: vec![0, 5, 37],
        outlier_scale: 50.0,
    };
    let mut rng = squish_testkit::rng(11);
    let k = kv_with_outliers(&mut rng, &spec);
    let v = kv_with_outliers(&mut rng, &spec);
    let ka = Array3::from_shape_vec((heads, seq, d), k.clone()).unwrap();
    let va = Array3::from_shape_vec((heads, seq, d), v.clone()).unwrap();
    let (kh, vh) = (split_heads(&k, heads), split_heads(&v, heads));
    for bits in ALL_BITS {
        for key_axis in [GroupAxis::AlongColumn, GroupAxis::AlongRow] {
            for prefill in [None, Some(40)] {
                // 96 quantised tokens and a residual of 54 (the window of 30 plus 24 waiting
                // to fill a group).
                let mut cfg = KvCompressorConfig::new(bits, 32, 30);
                cfg.value_group_size = 16;
                cfg.key_axis = key_axis;
                let kv = compress_maybe_appending(&cfg, &ka, &va, prefill);
                assert_eq!((kv.quantized_len(0), kv.head_len(0)), (96, 150));
                if let Err(e) = check_error_bound(&kv, &cfg, d, &kh, &vh) {
                    panic!("{bits:?} {key_axis:?} prefill {prefill:?}: {e}");
                }
            }
        }
    }
}

#[test]
fn error_bound_oracle_rejects_tampered_caches() {
    // The oracle must fail a cache whose stored scale is inflated (even slightly), whose
    // zero-point moved, whose code changed, or whose residual is not exact.
    let (heads, seq, d) = (2, 40, 8);
    let mut rng = squish_testkit::rng(5);
    let k = normal_vec(&mut rng, heads * seq * d, 0.0, 1.0);
    let v = normal_vec(&mut rng, heads * seq * d, 0.0, 1.0);
    let ka = Array3::from_shape_vec((heads, seq, d), k.clone()).unwrap();
    let va = Array3::from_shape_vec((heads, seq, d), v.clone()).unwrap();
    let (kh, vh) = (split_heads(&k, heads), split_heads(&v, heads));
    let mut cfg = KvCompressorConfig::new(QuantBits::B4, 8, 4);
    cfg.value_group_size = 4;
    let kv = compress_maybe_appending(&cfg, &ka, &va, None);
    check_error_bound(&kv, &cfg, d, &kh, &vh).unwrap();
    // (what, tampering of head 1, the failure the oracle must report)
    type Tamper = fn(&mut HeadStore);
    let tampered: [(&str, Tamper, &str); 6] = [
        (
            "key scale x (1 + 2^-18)",
            |s| s.k.scales[3] *= 1.0 + 2f32.powi(-18),
            "head 1 keys group 3: stored scale",
        ),
        (
            "value scale x 2",
            |s| s.v.scales[0] *= 2.0,
            "head 1 values group 0: stored scale",
        ),
        (
            "key zero-point",
            |s| s.k.zeros[1] = s.k.zeros[1].next_down(),
            "head 1 keys group 1: zero-point",
        ),
        // Codes moved by 8 steps (bit 3 of a 4-bit code): far past half a step.
        (
            "key code",
            |s| s.k.codes[0] ^= 0x08,
            "head 1 keys group 0, element 0:",
        ),
        (
            "value code",
            |s| s.v.codes[5] ^= 0x80,
            "head 1 values group 2, element 11:",
        ),
        (
            "residual value",
            |s| s.v_res[2] = s.v_res[2].next_up(),
            "head 1 residual values, element 258:",
        ),
    ];
    for (what, tamper, want) in tampered {
        let mut bad = kv.clone();
        tamper(&mut bad.heads[1]);
        let e = check_error_bound(&bad, &cfg, d, &kh, &vh).expect_err(what);
        assert!(e.starts_with(want), "{what}: {e}");
    }
}

#[test]
fn appending_token_by_token_equals_compressing_at_once() {
    prop::check("kv_compress_append", 40, |rng| {
        let heads = rng.random_range(1..4);
        let d = [4, 16, 64][rng.random_range(0..3)];
        let prefill = rng.random_range(0..20);
        let total = prefill + rng.random_range(0..70);
        let cfg = random_cfg(rng, d);
        let k = random_data(rng, heads * total * d);
        let v = random_data(rng, heads * total * d);
        let ka = Array3::from_shape_vec((heads, total, d), k).unwrap();
        let va = Array3::from_shape_vec((heads, total, d), v).unwrap();
        let mut comp = KvCompressor::new(cfg).unwrap();
        let mut once = CompressedKv::new();
        comp.compress_into(&ka, &va, None, &mut once).unwrap();
        let mut inc = CompressedKv::new();
        let pre = ndarray::s![.., ..prefill, ..];
        comp.compress_into(&ka.slice(pre), &va.slice(pre), None, &mut inc)
            .unwrap();
        for t in prefill..total {
            let kt = ka.slice(ndarray::s![.., t, ..]).to_owned();
            let vt = va.slice(ndarray::s![.., t, ..]).to_owned();
            comp.append(&kt, &vt, &mut inc).unwrap();
        }
        assert_eq!(inc, once);
    });
}

#[test]
fn per_channel_keys_beat_per_tensor_on_an_outlier_channel() {
    let mut rng = squish_testkit::rng(20);
    let spec = KvSpec {
        heads: 1,
        seq_len: 128,
        head_dim: 64,
        outlier_channels: vec![5],
        outlier_scale: 20.0,
    };
    let k = kv_with_outliers(&mut rng, &spec);
    for bits in ALL_BITS {
        let arr = Array3::from_shape_vec((1, 128, 64), k.clone()).unwrap();
        let mut kv = CompressedKv::new();
        let cfg = KvCompressorConfig::new(bits, 32, 0);
        KvCompressor::new(cfg)
            .unwrap()
            .compress_into(&arr, &arr, None, &mut kv)
            .unwrap();
        let (mut kd, mut vd) = (vec![0.0; k.len()], vec![0.0; k.len()]);
        kv.decompress_into(&mut kd, &mut vd).unwrap();
        // Per-tensor: one scale and zero for the whole head (the seed's approach, asymmetric).
        let whole = quantize_grouped(
            &k,
            1,
            k.len(),
            &GroupedQuantConfig::new(bits, k.len(), GroupAxis::AlongRow),
        )
        .unwrap()
        .dequantize();
        let mse = |y: &[f32]| -> f64 {
            y.iter()
                .zip(&k)
                .map(|(&a, &b)| f64::from(a - b).powi(2))
                .sum::<f64>()
                / k.len() as f64
        };
        let (per_channel, per_tensor) = (mse(&kd), mse(&whole));
        assert!(
            per_channel * 20.0 < per_tensor,
            "{bits:?}: {per_channel} vs {per_tensor}"
        );
    }
}

/// Naive reference of the kept indices: a full stable argsort.
fn argsort_reference(
    policy: &EvictionPolicy<'_>,
    keys: &[f32],
    d: usize,
    h: usize,
    keep: usize,
) -> Vec<u32> {
    let n = keys.len() / d;
    let keep = keep.min(n);
    let mut kept: Vec<usize> = match *policy {
        EvictionPolicy::StreamingLlm { sinks } => {
            let s = sinks.min(keep);
            (0..s).chain(n - (keep - s)..n).collect()
        }
        EvictionPolicy::H2o { recent, scores } => {
            let r = recent.min(keep);
            let sc = &scores[h * n..(h + 1) * n];
            let mut idx: Vec<usize> = (0..n - r).collect();
            idx.sort_by(|&a, &b| sc[b].total_cmp(&sc[a])); // stable: earlier first on ties
            idx.truncate(keep - r);
            idx.extend(n - r..n);
            idx
        }
        EvictionPolicy::KeyNorm => {
            let norms: Vec<f64> = keys
                .chunks_exact(d)
                .map(|k| k.iter().map(|&v| f64::from(v).powi(2)).sum())
                .collect();
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| norms[a].total_cmp(&norms[b]));
            idx.truncate(keep);
            idx
        }
    };
    kept.sort_unstable();
    kept.into_iter().map(|i| i as u32).collect()
}

/// One of the three policies with random parameters (H2O reading `scores`).
fn random_policy<'a, R: rand::Rng + ?Sized>(rng: &mut R, scores: &'a [f32]) -> EvictionPolicy<'a> {
    match rng.random_range(0..3) {
        0 => EvictionPolicy::StreamingLlm {
            sinks: rng.random_range(0..5),
        },
        1 => EvictionPolicy::H2o {
            recent: rng.random_range(0..8),
            scores,
        },
        _ => EvictionPolicy::KeyNorm,
    }
}

#[test]
fn eviction_keeps_the_budget_and_matches_argsort() {
    prop::check("kv_compress_eviction", 60, |rng| {
        let (heads, d) = (rng.random_range(1..5), 8);
        let seq = rng.random_range(1..60);
        let k: Vec<f32> = (0..heads * seq * d)
            .map(|_| rng.random_range(-8..8) as f32 * 0.25)
            .collect();
        let v = normal_vec(rng, heads * seq * d, 0.0, 1.0);
        let scores: Vec<f32> = (0..heads * seq)
            .map(|_| rng.random_range(0..10) as f32)
            .collect();
        let policy = random_policy(rng, &scores);
        let per_head: Vec<usize> = (0..heads).map(|_| rng.random_range(0..seq + 3)).collect();
        let equal = rng.random_range(0..seq + 3);
        let budget = if rng.random_range(0..2) == 0 {
            Budget::Equal(equal)
        } else {
            Budget::PerHead(&per_head)
        };
        let ev = Eviction::new(policy, budget);
        let cfg = KvCompressorConfig::new(QuantBits::B4, 4, 3);
        let ka = Array3::from_shape_vec((heads, seq, d), k.clone()).unwrap();
        let va = Array3::from_shape_vec((heads, seq, d), v.clone()).unwrap();
        let mut kv = CompressedKv::new();
        KvCompressor::new(cfg)
            .unwrap()
            .compress_into(&ka, &va, Some(&ev), &mut kv)
            .unwrap();
        let (kh, vh) = (split_heads(&k, heads), split_heads(&v, heads));
        let (mut gk, mut gv) = (Vec::new(), Vec::new());
        for h in 0..heads {
            let want = match budget {
                Budget::Equal(b) => b.min(seq),
                Budget::PerHead(b) => b[h].min(seq),
            };
            assert_eq!(kv.head_len(h), want, "exact budget of head {h}");
            let reference = argsort_reference(&policy, &kh[h], d, h, want);
            assert_eq!(kv.positions(h).unwrap(), reference);
            let gather = |x: &[f32]| -> Vec<f32> {
                reference
                    .iter()
                    .flat_map(|&t| x[t as usize * d..(t as usize + 1) * d].to_vec())
                    .collect()
            };
            gk.push(gather(&kh[h]));
            gv.push(gather(&vh[h]));
        }
        assert_matches_oracle(&kv, &gk, &gv);
    });
}

#[test]
fn appends_after_eviction_continue_positions() {
    let k = Array3::from_shape_fn((2, 10, 4), |(h, t, c)| (h * 100 + t * 4 + c) as f32);
    let ev = Eviction::new(
        EvictionPolicy::StreamingLlm { sinks: 1 },
        Budget::PerHead(&[3, 5]),
    );
    let mut cfg = KvCompressorConfig::new(QuantBits::B8, 2, 2);
    cfg.value_group_size = 4;
    let mut comp = KvCompressor::new(cfg).unwrap();
    let mut kv = CompressedKv::new();
    comp.compress_into(&k, &k, Some(&ev), &mut kv).unwrap();
    assert!(!kv.is_uniform());
    let tok = Array2::from_elem((2, 4), 7.0f32);
    comp.append(&tok, &tok, &mut kv).unwrap();
    assert_eq!(kv.positions(0).unwrap(), [0, 8, 9, 10]);
    assert_eq!(kv.positions(1).unwrap(), [0, 6, 7, 8, 9, 10]);
    let (mut a, mut b) = (vec![0.0; 8], vec![0.0; 8]);
    let e = kv.decompress_into(&mut a, &mut b).unwrap_err();
    insta::assert_snapshot!(e, @"shape mismatch in CompressedKv decompress_into: expected heads of equal length, got ragged heads");
}

#[test]
fn bytes_held_follows_the_layout() {
    // Metadata, from the fields' documented types: per head the quantised and residual
    // lengths (two usize); once the configuration (group_size, value_group_size, residual:
    // three usize; key_bits, value_bits, key_axis: three fieldless one-byte enums), head_dim,
    // the next position and the number of heads (three usize) and the evicted flag (one byte).
    let w = size_of::<usize>();
    let (header, per_head_meta) = (6 * w + 3 + 1, 2 * w);
    assert_eq!(CompressedKv::new().bytes_held(), header);
    let (heads, seq, d) = (3, 77, 64);
    let mut rng = squish_testkit::rng(3);
    let x = normal_vec(&mut rng, heads * seq * d, 0.0, 1.0);
    let arr = Array3::from_shape_vec((heads, seq, d), x).unwrap();
    for bits in ALL_BITS {
        let mut cfg = KvCompressorConfig::new(bits, 16, 20);
        cfg.value_bits = QuantBits::B8;
        cfg.value_group_size = 32;
        let mut kv = CompressedKv::new();
        KvCompressor::new(cfg)
            .unwrap()
            .compress_into(&arr, &arr, None, &mut kv)
            .unwrap();
        let q = 48; // 16 * floor((77 - 20) / 16)
        let per_head = q * d * bits.bits() as usize / 8 // key codes
            + q * d // value codes (8 bits)
            + 8 * (q / 16 * d) // key scale + zero per (16 tokens, channel)
            + 8 * (q * d / 32) // value scale + zero per (token, 32 channels)
            + 2 * 4 * (seq - q) * d; // f32 residual keys and values
        assert_eq!(kv.payload_bytes(), heads * per_head);
        assert_eq!(kv.metadata_bytes(), header + heads * per_head_meta);
        assert_eq!(kv.bytes_held(), heads * (per_head + per_head_meta) + header);
    }
    // Eviction adds 4 bytes per kept position.
    let cfg = KvCompressorConfig::new(QuantBits::B2, 8, 0);
    let ev = Eviction::new(EvictionPolicy::KeyNorm, Budget::Equal(64));
    let mut kv = CompressedKv::new();
    KvCompressor::new(cfg.clone())
        .unwrap()
        .compress_into(&arr, &arr, Some(&ev), &mut kv)
        .unwrap();
    let per_head = 2 * 64 * d / 4 + 8 * (64 / 8 * d) + 8 * (64 * d / 8) + 4 * 64;
    assert_eq!(kv.bytes_held(), heads * (per_head + per_head_meta) + header);
    // Spare capacity is not counted: a smaller prefill into the same cache reuses its
    // buffers but reports only what it holds.
    let small =
        Array3::from_shape_vec((1, 8, d), arr.as_slice().unwrap()[..8 * d].to_vec()).unwrap();
    KvCompressor::new(cfg)
        .unwrap()
        .compress_into(&small, &small, None, &mut kv)
        .unwrap();
    // 2-bit codes of 8 tokens, keys and values; 8 bytes per group: one block of 8 tokens per
    // channel (keys), 8 tokens x one group of 8 channels (values, value_group_size 8).
    let per_head = 2 * 8 * d / 4 + 8 * d + 8 * (8 * d / 8);
    assert_eq!(kv.bytes_held(), per_head + per_head_meta + header);
}

#[test]
fn config_errors() {
    let cfg = KvCompressorConfig {
        group_size: 0,
        ..KvCompressorConfig::default()
    };
    insta::assert_snapshot!(cfg.validate().unwrap_err(), @"invalid KvCompressor.group_size: must be in 1..=65536, got 0");
    let cfg = KvCompressorConfig {
        value_group_size: 6,
        ..KvCompressorConfig::default()
    };
    insta::assert_snapshot!(KvCompressor::new(cfg).unwrap_err(), @"invalid KvCompressor.value_group_size: must be a multiple of 4 in 4..=65536, got 6");
    let cfg = KvCompressorConfig {
        residual: (1 << 24) + 1,
        ..KvCompressorConfig::default()
    };
    insta::assert_snapshot!(cfg.validate().unwrap_err(), @"invalid KvCompressor.residual: must be at most 16777216, got 16777217");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mut comp = KvCompressor::new(KvCompressorConfig::new(QuantBits::B4, 4, 2)).unwrap();
    let mut kv = CompressedKv::new();
    let k = Array3::<f32>::zeros((2, 10, 8));
    let e = comp
        .compress_into(&k, &Array3::zeros((2, 9, 8)), None, &mut kv)
        .unwrap_err();
    insta::assert_snapshot!(e, @"shape mismatch in KvCompressor values: expected 2 x 10 x 8 like the keys, got (2, 9, 8)");
    let odd = Array3::<f32>::zeros((2, 10, 6));
    insta::assert_snapshot!(comp.compress_into(&odd, &odd, None, &mut kv).unwrap_err(), @"shape mismatch in KvCompressor head_dim: expected a positive multiple of 4, got 6");
    let wide = Array3::<f32>::zeros((2, 10, 12));
    let mut c8 = KvCompressor::new(KvCompressorConfig::new(QuantBits::B4, 8, 2)).unwrap();
    insta::assert_snapshot!(c8.compress_into(&wide, &wide, None, &mut kv).unwrap_err(), @"invalid KvCompressor.value_group_size: must divide head_dim (12), got 8");

    // NaN in the quantised part of the keys, in the residual of the values.
    let mut bad = k.clone();
    bad[[1, 2, 3]] = f32::NAN;
    insta::assert_snapshot!(comp.compress_into(&bad, &k, None, &mut kv).unwrap_err(), @"non-finite value in KvCompressor keys: element 99 is NaN");
    assert_eq!(kv.heads(), 0);
    let mut bad = k.clone();
    bad[[0, 9, 1]] = f32::INFINITY;
    insta::assert_snapshot!(comp.compress_into(&k, &bad, None, &mut kv).unwrap_err(), @"non-finite value in KvCompressor values: element 73 is inf");
    // Range overflow in a value group.
    let mut big = k.clone();
    big[[0, 0, 0]] = 3e38;
    big[[0, 0, 1]] = -3e38;
    insta::assert_snapshot!(comp.compress_into(&k, &big, None, &mut kv).unwrap_err(), @"value out of range in KvCompressor values (a group's range max - min is too large for f32): element 0 is 300000000000000000000000000000000000000");
    // NaN found after gathering evicted tokens still names the input element.
    let mut bad = k.clone();
    bad[[1, 7, 2]] = f32::NAN;
    let ev = Eviction::new(EvictionPolicy::StreamingLlm { sinks: 0 }, Budget::Equal(4));
    insta::assert_snapshot!(comp.compress_into(&k, &bad, Some(&ev), &mut kv).unwrap_err(), @"non-finite value in KvCompressor values: element 138 is NaN");

    // A NaN in an evicted token is still an error.
    let mut bad = k.clone();
    bad[[0, 1, 5]] = f32::NAN;
    insta::assert_snapshot!(comp.compress_into(&k, &bad, Some(&ev), &mut kv).unwrap_err(), @"non-finite value in KvCompressor values: element 13 is NaN");

    // Eviction inputs.
    let scores = [0.0f32; 19];
    let ev = Eviction::new(
        EvictionPolicy::H2o {
            recent: 1,
            scores: &scores,
        },
        Budget::Equal(4),
    );
    insta::assert_snapshot!(comp.compress_into(&k, &k, Some(&ev), &mut kv).unwrap_err(), @"shape mismatch in KvCompressor H2O scores: expected 2 x 10 = 20 values, got 19");
    let mut scores = [0.0f32; 20];
    scores[3] = f32::NAN;
    let ev = Eviction::new(
        EvictionPolicy::H2o {
            recent: 1,
            scores: &scores,
        },
        Budget::Equal(4),
    );
    insta::assert_snapshot!(comp.compress_into(&k, &k, Some(&ev), &mut kv).unwrap_err(), @"non-finite value in KvCompressor H2O scores: element 3 is NaN");
    let ev = Eviction::new(EvictionPolicy::KeyNorm, Budget::PerHead(&[1, 2, 3]));
    insta::assert_snapshot!(comp.compress_into(&k, &k, Some(&ev), &mut kv).unwrap_err(), @"shape mismatch in KvCompressor per-head budget: expected 2 counts, got 3");

    // Append: NaN leaves the cache unchanged; wrong shapes and configurations are refused.
    comp.compress_into(&k, &k, None, &mut kv).unwrap();
    let before = kv.clone();
    let mut tok = Array2::<f32>::zeros((2, 8));
    tok[[1, 1]] = f32::NAN;
    let ok = Array2::<f32>::zeros((2, 8));
    insta::assert_snapshot!(comp.append(&ok, &tok, &mut kv).unwrap_err(), @"non-finite value in KvCompressor append values: element 9 is NaN");
    assert_eq!(kv, before);
    insta::assert_snapshot!(comp.append(&Array2::zeros((3, 8)), &ok, &mut kv).unwrap_err(), @"shape mismatch in KvCompressor append: expected keys and values of 2 x 8, got (3, 8) and (2, 8)");
    let mut other = KvCompressor::new(KvCompressorConfig::new(QuantBits::B2, 4, 2)).unwrap();
    insta::assert_snapshot!(other.append(&ok, &ok, &mut kv).unwrap_err(), @"shape mismatch in KvCompressor append: expected a cache compressed with this configuration, got another configuration");
    let mut small = vec![0.0; 3];
    insta::assert_snapshot!(kv.decompress_head_into(0, &mut small, &mut vec![0.0; 80]).unwrap_err(), @"shape mismatch in decompress keys: expected 80 values, got 3");
    insta::assert_snapshot!(kv.decompress_head_into(2, &mut small, &mut vec![0.0; 80]).unwrap_err(), @"shape mismatch in CompressedKv head: expected < 2, got 2");
}

#[test]
fn an_overflowing_aged_group_leaves_the_cache_unchanged() {
    // Two heads; the overflow is in head 1, so head 0's group (quantised first) must be rolled
    // back. Keys overflow per channel (two tokens), values per token (one token, after its
    // keys were written); with a residual window and without one (the group then ends with
    // the appended token).
    for residual in [2, 0] {
        for in_values in [false, true] {
            let cfg = KvCompressorConfig::new(QuantBits::B4, 4, residual);
            let mut comp = KvCompressor::new(cfg).unwrap();
            let mut kv = CompressedKv::new();
            let (heads, d) = (2, 8);
            let zeros = Array3::<f32>::zeros((heads, 10, d));
            comp.compress_into(&zeros, &zeros, None, &mut kv).unwrap();
            let token = |t: usize| {
                let (mut k, mut v) = (Array2::<f32>::zeros((heads, d)), Array2::zeros((heads, d)));
                k[[0, 0]] = t as f32;
                v[[0, 1]] = -(t as f32);
                if in_values && t == 1 {
                    (v[[1, 0]], v[[1, 1]]) = (3e38, -3e38);
                }
                if !in_values {
                    k[[1, 2]] = [0.0, 3e38, -3e38, 0.0][t % 4];
                }
                (k, v)
            };
            // Appends until one is refused; the refused one leaves the cache as it was.
            let mut refused = false;
            for t in 0..8 {
                let before = kv.clone();
                let (k, v) = token(t);
                if let Err(e) = comp.append(&k, &v, &mut kv) {
                    assert!(
                        matches!(e, Error::Core(squish_core::Error::OutOfRange { .. })),
                        "{e}"
                    );
                    assert_eq!(kv, before, "residual {residual}, values {in_values}");
                    refused = true;
                    break;
                }
            }
            assert!(refused, "residual {residual}, values {in_values}");
        }
    }
}

#[test]
fn compressor_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KvCompressor>();
    assert_send_sync::<CompressedKv>();
}

/// Each head's decompressed `[len, d]` keys and values.
fn decompress_heads(kv: &CompressedKv) -> Vec<(Vec<f32>, Vec<f32>)> {
    let d = kv.head_dim();
    (0..kv.heads())
        .map(|h| {
            let n = kv.head_len(h) * d;
            let (mut k, mut v) = (vec![0.0; n], vec![0.0; n]);
            kv.decompress_head_into(h, &mut k, &mut v).unwrap();
            (k, v)
        })
        .collect()
}

/// Decode-time eviction against oracles that do not trust it, over rounds of appends and
/// evictions on random configurations: each head keeps exactly its budget; the kept set is a
/// naive stable argsort's over the tokens held (norms of the decompressed keys, the given
/// scores, sinks + recent); every kept token decompresses to the very bits it had (nothing is
/// re-quantised) and `positions` names its original position; tokens appended afterwards
/// that age into groups are exactly squish-core's `quantize_grouped` of their rows.
#[test]
fn decode_time_eviction_keeps_exact_bits_and_matches_argsort() {
    prop::check("kv_compress_decode_eviction", 120, |rng| {
        let d = [4usize, 8, 16][rng.random_range(0..3)];
        let cfg = random_cfg(rng, d);
        let heads = rng.random_range(1..4);
        let seq = rng.random_range(0..50);
        let k = random_data(rng, heads * seq * d);
        let v = random_data(rng, heads * seq * d);
        let mut comp = KvCompressor::new(cfg.clone()).unwrap();
        let mut kv = CompressedKv::new();
        let ka = Array3::from_shape_vec((heads, seq, d), k).unwrap();
        let va = Array3::from_shape_vec((heads, seq, d), v).unwrap();
        comp.compress_into(&ka, &va, None, &mut kv).unwrap();
        for _ in 0..4 {
            // Appends: check the groups they age against squish-core.
            let before = decompress_heads(&kv);
            let q0: Vec<usize> = (0..heads).map(|h| kv.quantized_len(h)).collect();
            let m = rng.random_range(0..2 * cfg.group_size + 3);
            let mut rows = vec![(Vec::new(), Vec::new()); heads];
            for _ in 0..m {
                let tk = normal_vec(rng, heads * d, 0.0, 2.0);
                let tv = normal_vec(rng, heads * d, 0.0, 1.0);
                for (h, r) in rows.iter_mut().enumerate() {
                    r.0.extend_from_slice(&tk[h * d..(h + 1) * d]);
                    r.1.extend_from_slice(&tv[h * d..(h + 1) * d]);
                }
                let (tk, tv) = (
                    Array2::from_shape_vec((heads, d), tk).unwrap(),
                    Array2::from_shape_vec((heads, d), tv).unwrap(),
                );
                comp.append(&tk, &tv, &mut kv).unwrap();
            }
            let after = decompress_heads(&kv);
            for h in 0..heads {
                let (q0, q1) = (q0[h] * d, kv.quantized_len(h) * d);
                // Every token held before keeps its bits...
                let (bk, bv) = &before[h];
                let n0 = bk.len();
                assert_eq!(&after[h].0[..q0], &bk[..q0]);
                assert_eq!(&after[h].1[..q0], &bv[..q0]);
                // ...and the newly aged groups are squish-core's quantisation of their rows
                // (the old residual, exact, then the appended tokens).
                let raw_k: Vec<f32> = bk[q0..].iter().chain(&rows[h].0).copied().collect();
                let raw_v: Vec<f32> = bv[q0..].iter().chain(&rows[h].1).copied().collect();
                let g = (q1 - q0) / d;
                let ko = quantize_grouped(&raw_k[..q1 - q0], g, d, &key_cfg(&cfg)).unwrap();
                let vo = quantize_grouped(&raw_v[..q1 - q0], g, d, &value_cfg(&cfg)).unwrap();
                assert_eq!(
                    after[h].0[q0..q1],
                    ko.dequantize()[..],
                    "head {h} aged keys"
                );
                assert_eq!(
                    after[h].1[q0..q1],
                    vo.dequantize()[..],
                    "head {h} aged values"
                );
                assert_eq!(after[h].0[q1..], raw_k[q1 - q0..], "head {h} residual keys");
                assert_eq!(
                    after[h].1[q1..],
                    raw_v[q1 - q0..],
                    "head {h} residual values"
                );
                assert_eq!(after[h].0.len(), n0 + m * d);
            }

            // Eviction.
            let pre = decompress_heads(&kv);
            let lens: Vec<usize> = (0..heads).map(|h| kv.head_len(h)).collect();
            let total: usize = lens.iter().sum();
            let positions: Vec<Vec<u32>> = (0..heads)
                .map(|h| {
                    kv.positions(h)
                        .map_or_else(|| (0..lens[h] as u32).collect(), <[u32]>::to_vec)
                })
                .collect();
            let scores: Vec<f32> = (0..total).map(|_| rng.random_range(0..6) as f32).collect();
            let policy = random_policy(rng, &scores);
            let max = lens.iter().copied().max().unwrap_or(0);
            let per_head: Vec<usize> = (0..heads).map(|_| rng.random_range(0..max + 3)).collect();
            let budget = if rng.random_range(0..2) == 0 {
                Budget::Equal(rng.random_range(0..max + 3))
            } else {
                Budget::PerHead(&per_head)
            };
            comp.evict(&Eviction::new(policy, budget), &mut kv).unwrap();
            let post = decompress_heads(&kv);
            let mut offset = 0;
            for h in 0..heads {
                let n = lens[h];
                let keep = match budget {
                    Budget::Equal(b) => b.min(n),
                    Budget::PerHead(b) => b[h].min(n),
                };
                assert_eq!(kv.head_len(h), keep, "exact budget of head {h}");
                let sc = &scores[offset..offset + n];
                offset += n;
                let head_policy = match policy {
                    EvictionPolicy::H2o { recent, .. } => {
                        EvictionPolicy::H2o { recent, scores: sc }
                    }
                    p => p,
                };
                let reference = argsort_reference(&head_policy, &pre[h].0, d, 0, keep);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                for (j, &t) in reference.iter().enumerate() {
                    let (t, j) = (t as usize, j);
                    assert_eq!(
                        bits(&post[h].0[j * d..(j + 1) * d]),
                        bits(&pre[h].0[t * d..(t + 1) * d]),
                        "head {h}: key of kept token {t}"
                    );
                    assert_eq!(
                        bits(&post[h].1[j * d..(j + 1) * d]),
                        bits(&pre[h].1[t * d..(t + 1) * d]),
                        "head {h}: value of kept token {t}"
                    );
                }
                let want: Vec<u32> = reference
                    .iter()
                    .map(|&t| positions[h][t as usize])
                    .collect();
                if kv.positions(h).is_some() || keep < n {
                    assert_eq!(kv.positions(h).unwrap(), want, "positions of head {h}");
                }
            }
        }
    });
}

#[test]
fn decode_time_eviction_errors_leave_the_cache_unchanged() {
    let cfg = KvCompressorConfig::new(QuantBits::B4, 4, 2);
    let mut comp = KvCompressor::new(cfg.clone()).unwrap();
    let k = Array3::from_shape_fn((2, 11, 8), |(h, t, c)| (h * 7 + t * 3 + c) as f32 * 0.1);
    let mut kv = CompressedKv::new();
    comp.compress_into(&k, &k, None, &mut kv).unwrap();
    let kept = kv.clone();
    let ev = |p, b| Eviction::new(p, b);
    let scores = vec![1.0f32; 22];
    let mut bad = scores.clone();
    bad[13] = f32::NAN;
    let cases: [(Eviction<'_>, &str); 3] = [
        (
            ev(EvictionPolicy::KeyNorm, Budget::PerHead(&[3])),
            "shape mismatch in KvCompressor evict per-head budget: expected 2 counts, got 1",
        ),
        (
            ev(
                EvictionPolicy::H2o {
                    recent: 1,
                    scores: &scores[..21],
                },
                Budget::Equal(5),
            ),
            "shape mismatch in KvCompressor evict H2O scores: expected 22 values (one per held token), got 21",
        ),
        (
            ev(
                EvictionPolicy::H2o {
                    recent: 1,
                    scores: &bad,
                },
                Budget::Equal(5),
            ),
            "non-finite value in KvCompressor evict H2O scores: element 13 is NaN",
        ),
    ];
    for (e, msg) in cases {
        assert_eq!(comp.evict(&e, &mut kv).unwrap_err().to_string(), msg);
        assert_eq!(kv, kept);
    }
    // Another configuration's cache.
    let mut other = KvCompressor::new(KvCompressorConfig::new(QuantBits::B8, 4, 2)).unwrap();
    let e = other
        .evict(&ev(EvictionPolicy::KeyNorm, Budget::Equal(1)), &mut kv)
        .unwrap_err();
    insta::assert_snapshot!(e, @"shape mismatch in KvCompressor evict: expected a cache compressed with this configuration, got another configuration");
    assert_eq!(kv, kept);
    // A budget at or above every head's length changes nothing, not even the evicted flag.
    comp.evict(&ev(EvictionPolicy::KeyNorm, Budget::Equal(11)), &mut kv)
        .unwrap();
    assert_eq!(kv, kept);
    assert!(kv.positions(0).is_none());
    // StreamingLLM down to 6 of 11 (8 quantised in groups of 4, 3 residual): sinks 0, 1 and
    // tokens 7..11; the first group keeps 2 of its 4 tokens, the second group 1 (token 7).
    comp.evict(
        &ev(EvictionPolicy::StreamingLlm { sinks: 2 }, Budget::Equal(6)),
        &mut kv,
    )
    .unwrap();
    for h in 0..2 {
        assert_eq!(kv.positions(h).unwrap(), [0, 1, 7, 8, 9, 10]);
        assert_eq!(kv.quantized_len(h), 3);
        assert_eq!(kv.heads[h].k_lens, [2, 1]);
    }
    // Bytes: 3 quantised tokens of 8 channels at 4 bits (4 bytes of codes each, keys and
    // values), 2 key groups x 8 channels and 3 tokens x 2 value groups of (scale, zero), 3
    // residual tokens x 8 x 2 f32, 6 positions and 2 group lengths.
    let per_head = 3 * 4 * 2 + (2 * 8 + 3 * 2) * 2 * 4 + 3 * 8 * 2 * 4 + 6 * 4 + 2 * 4;
    assert_eq!(kv.payload_bytes(), 2 * per_head);
}
