//! DynamicNtkScaler against float64 references of the published formulas (transformers'
//! `_compute_dynamic_ntk_parameters`, `_compute_yarn_parameters`, `_compute_llama3_parameters`),
//! re-rotation against rotation from scratch, and real SmolLM2 keys.

use std::f64::consts::PI;

use rand::RngExt;
use squish_attn::{
    DynamicNtkConfig, DynamicNtkScaler, Error, RopeLayout, RopeScaling, rope_rotate_in_place,
};
use squish_testkit::{
    data, npy, prop,
    tol::{Tol, assert_close},
};

/// The default configuration with `f` applied (the config is `#[non_exhaustive]`).
fn with_cfg(f: impl FnOnce(&mut DynamicNtkConfig)) -> DynamicNtkConfig {
    let mut c = DynamicNtkConfig::default();
    f(&mut c);
    c
}

fn seed_scaler() -> DynamicNtkScaler {
    DynamicNtkScaler::new(DynamicNtkConfig::default()).unwrap()
}

fn unscaled_f64(base: f64, d: usize) -> Vec<f64> {
    (0..d / 2)
        .map(|i| base.powf(-((2 * i) as f64) / d as f64))
        .collect()
}

/// Distance in f32 ulps.
fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn unscaled_frequencies_are_within_one_ulp_of_f64_powf() {
    for (base, d) in [
        (10_000.0, 128),
        (100_000.0, 64),
        (500_000.0, 128),
        (10_000.0, 2),
        (1.5, 256),
    ] {
        let rope = DynamicNtkScaler::new(with_cfg(|c| {
            c.base = base;
            c.head_dim = d;
            c.scaling = RopeScaling::None;
        }))
        .unwrap();
        let mut f = vec![0.0f32; d / 2];
        let p = rope.inv_freq_into(10_000_000, &mut f).unwrap();
        assert!(!p.is_scaled);
        for (i, (&got, r)) in f.iter().zip(unscaled_f64(base, d)).enumerate() {
            assert!(
                ulps(got, r as f32) <= 1,
                "base {base} d {d} i {i}: {got} vs {r}"
            );
        }
    }
    // Dynamic NTK at or below L₀ is the unscaled table.
    let rope = seed_scaler();
    let mut f = vec![0.0f32; 64];
    for l in [0, 1, 2048, 4095, 4096] {
        let p = rope.inv_freq_into(l, &mut f).unwrap();
        assert!(!p.is_scaled && p.base == 10_000.0, "{l}");
        for (&got, r) in f.iter().zip(unscaled_f64(10_000.0, 128)) {
            assert!(ulps(got, r as f32) <= 1);
        }
    }
}

#[test]
fn dynamic_ntk_base_matches_transformers_formula() {
    let rope = seed_scaler();
    let (base, a, l0, d) = (10_000.0f64, 8.0f64, 4096.0f64, 128.0f64);
    for l in [4097usize, 6000, 8192, 16_384, 32_768, 1_000_000] {
        let expected = base * (a * l as f64 / l0 - (a - 1.0)).powf(d / (d - 2.0));
        let p = rope.params(l);
        assert!(p.is_scaled);
        assert!(
            (p.base - expected).abs() <= 1e-12 * expected,
            "{l}: {} vs {expected}",
            p.base
        );
        let mut f = vec![0.0f32; 64];
        rope.inv_freq_into(l, &mut f).unwrap();
        for (&got, r) in f.iter().zip(unscaled_f64(expected, 128)) {
            assert!(ulps(got, r as f32) <= 1);
        }
    }
}

#[test]
fn base_is_non_decreasing_continuous_and_is_scaled_is_honest() {
    for factor in [1.0, 2.0, 8.0, 64.0] {
        let rope = DynamicNtkScaler::new(with_cfg(|c| {
            c.scaling = RopeScaling::DynamicNtk { factor };
        }))
        .unwrap();
        let mut prev = 0.0;
        for l in (0..50_000).step_by(7).chain(4090..4110) {
            let p = rope.params(l);
            if (4090..4110).contains(&l) {
                continue; // checked below in order
            }
            assert!(p.base >= prev, "factor {factor}: base fell at {l}");
            prev = p.base;
            assert_eq!(p.is_scaled, p.base != 10_000.0, "{l}");
            assert_eq!(p.is_scaled, l > 4096, "{l}");
        }
        assert_eq!(rope.params(4096).base, 10_000.0);
        // Continuity at L₀: one position past it moves the base by O(α/L₀).
        let step = rope.params(4097).base / 10_000.0 - 1.0;
        assert!(
            step > 0.0 && step < 2.0 * factor / 4096.0,
            "factor {factor}: jump {step}"
        );
    }
}

#[test]
fn frequencies_start_at_one_and_strictly_decrease_for_every_policy() {
    let policies = [
        RopeScaling::None,
        RopeScaling::DynamicNtk { factor: 8.0 },
        RopeScaling::yarn(8.0),
        RopeScaling::yarn(1.0),
        RopeScaling::llama3(8.0),
    ];
    for scaling in policies {
        for (base, d, l0) in [
            (10_000.0, 128, 4096),
            (500_000.0, 128, 8192),
            (100_000.0, 64, 2048),
        ] {
            let rope = DynamicNtkScaler::new(with_cfg(|c| {
                c.base = base;
                c.head_dim = d;
                c.original_max_position = l0;
                c.scaling = scaling;
            }))
            .unwrap();
            let mut f = vec![0.0f32; d / 2];
            for l in [1, l0, 3 * l0] {
                rope.inv_freq_into(l, &mut f).unwrap();
                assert_eq!(f[0], 1.0, "{scaling:?}");
                assert!(f.windows(2).all(|w| w[1] < w[0]), "{scaling:?} {f:?}");
            }
        }
    }
}

#[test]
fn yarn_ramp_endpoints_and_temperature_as_published() {
    let (base, d, l0, s) = (10_000.0f64, 128usize, 4096.0f64, 8.0f64);
    let rope = DynamicNtkScaler::new(with_cfg(|c| {
        c.scaling = RopeScaling::yarn(s);
    }))
    .unwrap();
    // The paper's correction range: the pair whose wavelength fits r times in L₀.
    let dim = |r: f64| d as f64 * (l0 / (r * 2.0 * PI)).ln() / (2.0 * base.ln());
    let low = dim(32.0).floor() as usize;
    let high = dim(1.0).ceil() as usize;
    assert_eq!((low, high), (20, 46)); // for this configuration
    let mut f = vec![0.0f64; 64];
    let p = rope.inv_freq_f64_into(100, &mut f).unwrap();
    assert!(p.is_scaled && p.base == base);
    let unscaled = unscaled_f64(base, d);
    for i in 0..64 {
        let rel_to = |x: f64| (f[i] - x).abs() / x;
        if i <= low {
            assert!(rel_to(unscaled[i]) < 1e-13, "pair {i} kept (extrapolated)");
        } else if i >= high {
            assert!(rel_to(unscaled[i] / s) < 1e-13, "pair {i} interpolated");
        } else {
            let ramp = (i - low) as f64 / (high - low) as f64;
            let expected = unscaled[i] / s * ramp + unscaled[i] * (1.0 - ramp);
            assert!(rel_to(expected) < 1e-13, "pair {i} on the ramp");
        }
    }
    assert!((p.attention_factor - (0.1 * s.ln() + 1.0)).abs() < 1e-15);
    // cos/sin carry the temperature: at position 0, cos = mscale and sin = 0.
    let mut rope = rope;
    let (mut c, mut sn) = (vec![0.0f32; 64], vec![0.0f32; 64]);
    rope.cos_sin_into(100, 0..1, &mut c, &mut sn).unwrap();
    assert!(c.iter().all(|&x| x == (0.1 * s.ln() + 1.0) as f32));
    assert!(sn.iter().all(|&x| x == 0.0));
    // An explicit attention factor overrides the temperature.
    let rope = DynamicNtkScaler::new(with_cfg(|c| {
        c.scaling = RopeScaling::Yarn {
            factor: s,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: Some(1.5),
        };
    }))
    .unwrap();
    assert_eq!(rope.params(1).attention_factor, 1.5);
}

#[test]
fn llama3_bands_as_published() {
    // Llama 3.1: base 500 000, d 128, L₀ 8192, factor 8, low 1, high 4.
    let (base, l0, s) = (500_000.0f64, 8192.0f64, 8.0f64);
    let rope = DynamicNtkScaler::new(with_cfg(|c| {
        c.base = base;
        c.original_max_position = 8192;
        c.scaling = RopeScaling::llama3(s);
    }))
    .unwrap();
    let mut f = vec![0.0f64; 64];
    rope.inv_freq_f64_into(1, &mut f).unwrap();
    let (mut kept, mut divided, mut smooth) = (0, 0, 0);
    for (i, &u) in unscaled_f64(base, 128).iter().enumerate() {
        let wl = 2.0 * PI / u;
        let expected = if wl < l0 / 4.0 {
            kept += 1;
            u
        } else if wl > l0 {
            divided += 1;
            u / s
        } else {
            smooth += 1;
            let k = (l0 / wl - 1.0) / 3.0;
            (1.0 - k) * u / s + k * u
        };
        assert!((f[i] - expected).abs() <= 1e-13 * expected, "pair {i}");
    }
    assert!(
        kept > 0 && divided > 0 && smooth > 0,
        "{kept} {divided} {smooth}"
    );
}

/// Rotates raw keys with `base` from scratch (f64 reference frequencies).
fn rotated(raw: &[f32], d: usize, first: usize, base: f64, layout: RopeLayout) -> Vec<f32> {
    let mut x = raw.to_vec();
    rope_rotate_in_place(&mut x, d, first, &unscaled_f64(base, d), layout).unwrap();
    x
}

#[test]
fn rerotated_keys_equal_keys_rotated_from_scratch_with_the_new_base() {
    prop::check("ntk_rerotation", 24, |rng| {
        let layout = if rng.random::<bool>() {
            RopeLayout::AdjacentPairs
        } else {
            RopeLayout::HalfSplit
        };
        let d = 2 * rng.random_range(2..65);
        let rope = DynamicNtkScaler::new(with_cfg(|c| {
            c.head_dim = d;
            c.layout = layout;
        }))
        .unwrap();
        let n = rng.random_range(1..40);
        let first = rng.random_range(0..20_000);
        let raw = data::normal_vec(rng, n * d, 0.0, 1.0);
        let a = rope.params(rng.random_range(0..12_000)).base;
        let b = rope.params(rng.random_range(0..40_000)).base;
        let mut keys = rotated(&raw, d, first, a, layout);
        rope.rerotate_in_place(&mut keys, first, a, b).unwrap();
        let expected: Vec<f64> = rotated(&raw, d, first, b, layout)
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        assert_close(&keys, &expected, Tol::new(1e-5, 1e-5));
    });
}

#[test]
fn stale_keys_differ_and_needs_rerotation_says_so() {
    let rope = seed_scaler();
    assert!(!rope.needs_rerotation(10_000.0, 4096));
    assert!(rope.needs_rerotation(10_000.0, 4097));
    let b = rope.params(8192).base;
    assert!(!rope.needs_rerotation(b, 8192));
    assert!(rope.needs_rerotation(b, 8193));
    // Keys at positions ~4000 rotated with the old base are far from the new-base keys.
    let mut rng = squish_testkit::rng(3);
    let raw = data::normal_vec(&mut rng, 8 * 128, 0.0, 1.0);
    let old = rotated(&raw, 128, 4000, 10_000.0, RopeLayout::HalfSplit);
    let new = rotated(&raw, 128, 4000, b, RopeLayout::HalfSplit);
    let worst = old
        .iter()
        .zip(&new)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst > 0.5, "stale keys should be visibly wrong: {worst}");
}

#[test]
fn real_smollm2_keys_round_trip_through_rope() {
    let Some(dir) = squish_testkit::shared_dir() else {
        eprintln!("shared/ not found: real-data check skipped");
        return;
    };
    let path = dir.join("data/smollm2-kv/t33_L08_k.npy");
    let k = npy::read::<f32>(&path).unwrap();
    let [heads, seq, d] = k.shape[..] else {
        panic!("shape {:?}", k.shape)
    };
    assert_eq!(d, 64);
    let theta = unscaled_f64(100_000.0, d);
    let neg: Vec<f64> = theta.iter().map(|f| -f).collect();
    let max = k.data.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let rope = DynamicNtkScaler::new(with_cfg(|c| {
        c.base = 100_000.0;
        c.head_dim = 64;
        c.original_max_position = 64;
        c.layout = RopeLayout::AdjacentPairs;
    }))
    .unwrap();
    for h in 0..heads {
        let cached = &k.data[h * seq * d..(h + 1) * seq * d];
        // Undo RoPE (base 1e5, adjacent pairs) to get the raw keys, then re-apply.
        let mut raw = cached.to_vec();
        rope_rotate_in_place(&mut raw, d, 0, &neg, RopeLayout::AdjacentPairs).unwrap();
        let mut again = raw.clone();
        rope_rotate_in_place(&mut again, d, 0, &theta, RopeLayout::AdjacentPairs).unwrap();
        let expected: Vec<f64> = cached.iter().map(|&x| f64::from(x)).collect();
        assert_close(&again, &expected, Tol::new(1e-5, 1e-5 * f64::from(max)));
        // Move the cached keys to a dynamic-NTK base: equals rotating the raw keys from scratch.
        let b = rope.params(4 * 64).base;
        let mut moved = cached.to_vec();
        rope.rerotate_in_place(&mut moved, 0, 100_000.0, b).unwrap();
        let expected: Vec<f64> = rotated(&raw, d, 0, b, RopeLayout::AdjacentPairs)
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        assert_close(&moved, &expected, Tol::new(1e-5, 1e-5 * f64::from(max)));
    }
}

#[test]
fn cos_sin_tables_match_f64_and_the_cache_is_bounded() {
    let mut rope = DynamicNtkScaler::new(with_cfg(|c| {
        c.head_dim = 16;
        c.cache_capacity = 2;
        c.max_cached_positions = 100;
    }))
    .unwrap();
    let check = |rope: &mut DynamicNtkScaler, l: usize, r: std::ops::Range<usize>| {
        let n = r.len() * 8;
        let (mut c, mut s) = (vec![0.0f32; n], vec![0.0f32; n]);
        let p = rope.cos_sin_into(l, r.clone(), &mut c, &mut s).unwrap();
        let f = unscaled_f64(p.base, 16);
        let (mut ec, mut es) = (Vec::new(), Vec::new());
        for pos in r {
            for &fi in &f {
                ec.push((pos as f64 * fi).cos());
                es.push((pos as f64 * fi).sin());
            }
        }
        assert_close(&c, &ec, Tol::new(0.0, 2e-6));
        assert_close(&s, &es, Tol::new(0.0, 2e-6));
    };
    check(&mut rope, 50, 0..10); // fills rows [0, 10)
    check(&mut rope, 50, 5..60); // grows to 60, partly cached
    check(&mut rope, 50, 90..150); // past the cache bound: rows 100.. computed
    check(&mut rope, 50, 0..150);
    check(&mut rope, 50, 3..3);
    check(&mut rope, 6000, 5990..6000); // new base, not contiguous: computed
    check(&mut rope, 7000, 0..20);
    check(&mut rope, 9000, 0..20); // third base: evicts the least recently used
    assert_eq!(rope.cached_bases(), 2);
    let bound = 2 * (100 * 8 * 4 * 2 + 8 * 12);
    assert!(
        rope.cache_bytes() <= bound,
        "{} > {bound}",
        rope.cache_bytes()
    );
    check(&mut rope, 50, 0..150);
    // The cached frequencies equal the recomputed ones.
    let mut a = vec![0.0f32; 8];
    let mut b = vec![0.0f32; 8];
    for l in [10, 5000, 9000, 12_345] {
        let pa = rope.inv_freq_into(l, &mut a).unwrap();
        let pb = rope.inv_freq_cached_into(l, &mut b).unwrap();
        assert_eq!(pa, pb);
        assert_eq!(a, b);
    }
}

#[test]
fn errors_are_typed() {
    let bad = |cfg: DynamicNtkConfig| cfg.validate().unwrap_err().to_string();
    insta::assert_snapshot!(bad(with_cfg(|c| { c.base = 1.0; })), @"invalid DynamicNtkScaler.base: must be finite and > 1, got 1");
    insta::assert_snapshot!(bad(with_cfg(|c| { c.head_dim = 2; })), @"invalid DynamicNtkScaler.head_dim: must be even and at least 4, got 2");
    insta::assert_snapshot!(bad(with_cfg(|c| { c.head_dim = 63; c.scaling = RopeScaling::None; })), @"invalid DynamicNtkScaler.head_dim: must be even and at least 2, got 63");
    insta::assert_snapshot!(bad(with_cfg(|c| { c.original_max_position = 0; })), @"invalid DynamicNtkScaler.original_max_position: must be at least 1, got 0");
    insta::assert_snapshot!(bad(with_cfg(|c| { c.cache_capacity = 0; })), @"invalid DynamicNtkScaler.cache_capacity: must be at least 1, got 0");
    insta::assert_snapshot!(bad(with_cfg(|c| { c.scaling = RopeScaling::DynamicNtk { factor: 0.5 }; })), @"invalid DynamicNtkScaler.scaling.factor: must be finite and ≥ 1, got 0.5");
    insta::assert_snapshot!(bad(with_cfg(|c| { c.scaling = RopeScaling::Yarn { factor: 4.0, beta_fast: 1.0, beta_slow: 1.0, attention_factor: None }; })), @"invalid DynamicNtkScaler.scaling.beta_fast: must be finite and > beta_slow (1), got 1");
    insta::assert_snapshot!(bad(with_cfg(|c| { c.scaling = RopeScaling::Yarn { factor: 4.0, beta_fast: 32.0, beta_slow: 1.0, attention_factor: Some(f64::NAN) }; })), @"invalid DynamicNtkScaler.scaling.attention_factor: must be finite and > 0, got NaN");
    insta::assert_snapshot!(bad(with_cfg(|c| { c.scaling = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 4.0, high_freq_factor: 1.0 }; })), @"invalid DynamicNtkScaler.scaling.high_freq_factor: must be finite and > low_freq_factor (4), got 1");
    assert!(matches!(
        DynamicNtkScaler::new(with_cfg(|c| {
            c.base = f64::NAN;
        })),
        Err(Error::Config(_))
    ));

    let mut rope = seed_scaler();
    let e = rope.inv_freq_into(10, &mut [0.0; 63]).unwrap_err();
    insta::assert_snapshot!(e, @"shape mismatch in DynamicNtkScaler::inv_freq_into out: expected 64, got 63");
    assert!(matches!(
        rope.inv_freq_cached_into(10, &mut [0.0; 65]),
        Err(Error::Shape(_))
    ));
    let e = rope
        .cos_sin_into(10, 0..2, &mut [0.0; 128], &mut [0.0; 127])
        .unwrap_err();
    insta::assert_snapshot!(e, @"shape mismatch in DynamicNtkScaler::cos_sin_into sin: expected 128, got 127");
    #[allow(clippy::reversed_empty_ranges)]
    let e = rope.cos_sin_into(10, 5..2, &mut [], &mut []).unwrap_err();
    insta::assert_snapshot!(e, @"invalid DynamicNtkScaler.positions: start must not exceed end, got 5..2");
    let mut keys = vec![0.0f32; 130];
    let e = rope.rerotate_in_place(&mut keys, 0, 1e4, 2e4).unwrap_err();
    insta::assert_snapshot!(e, @"shape mismatch in DynamicNtkScaler::rerotate_in_place keys (multiple of head_dim): expected n × 128, got 130");
    let mut keys = vec![0.0f32; 128];
    let e = rope.rerotate_in_place(&mut keys, 0, 0.5, 2e4).unwrap_err();
    insta::assert_snapshot!(e, @"invalid DynamicNtkScaler.from_base: must be finite and > 1, got 0.5");
    keys[3] = f32::NAN;
    let e = rope.rerotate_in_place(&mut keys, 0, 1e4, 2e4).unwrap_err();
    insta::assert_snapshot!(e, @"non-finite value in DynamicNtkScaler::rerotate_in_place keys: element 3 is NaN");
    let mut x = vec![1.0f32; 8];
    assert!(matches!(
        rope_rotate_in_place(&mut x, 3, 0, &[1.0], RopeLayout::HalfSplit),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        rope_rotate_in_place(&mut x, 4, 0, &[1.0], RopeLayout::HalfSplit),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        rope_rotate_in_place(&mut x, 4, 0, &[1.0, f64::NAN], RopeLayout::HalfSplit),
        Err(Error::Core(_))
    ));
    assert!(matches!(
        rope_rotate_in_place(&mut x[..6], 4, 0, &[1.0, 0.5], RopeLayout::HalfSplit),
        Err(Error::Shape(_))
    ));
}

#[test]
fn scaler_and_kernel_are_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DynamicNtkScaler>();
    assert_send_sync::<squish_attn::RetentionKernel>();
    assert_send_sync::<squish_attn::RetentionState>();
}
