//! Naive float64 references that tests and claims compare fast kernels against.

/// Exact attention output for one query, in `f64`: `softmax(scale · K q) V` over every key
/// (no mask), with `keys` and `values` as row-major `[n, d]` and `d = q.len()`.
///
/// # Panics
/// If `keys` or `values` is not a whole number of `d`-rows, or they hold different row counts.
pub fn attention_f64(q: &[f32], keys: &[f32], values: &[f32], scale: f32) -> Vec<f64> {
    attention_lse_f64(q, keys, values, scale).0
}

/// [`attention_f64`] and the natural log-sum-exp of the scaled logits, `ln Σⱼ exp(scale · kⱼ·q)`
/// (`-inf` when there are no keys, whose output is all zeros).
///
/// # Panics
/// As [`attention_f64`].
pub fn attention_lse_f64(q: &[f32], keys: &[f32], values: &[f32], scale: f32) -> (Vec<f64>, f64) {
    let d = q.len();
    assert!(
        d > 0 && keys.len().is_multiple_of(d) && keys.len() == values.len(),
        "shapes"
    );
    let logits: Vec<f64> = keys
        .chunks_exact(d)
        .map(|k| {
            f64::from(scale)
                * q.iter()
                    .zip(k)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>()
        })
        .collect();
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|&z| (z - m).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut o = vec![0.0f64; d];
    for (wj, v) in w.iter().zip(values.chunks_exact(d)) {
        for (oi, &vi) in o.iter_mut().zip(v) {
            *oi += wj / total * f64::from(vi);
        }
    }
    (o, m + total.ln())
}

/// Euclidean distance between an `f32` vector and an `f64` reference, in `f64`.
///
/// # Panics
/// If the lengths differ.
pub fn l2_distance(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_of_one_key_is_its_value_and_equal_logits_average() {
        assert_eq!(
            attention_f64(&[1.0, 2.0], &[3.0, 4.0], &[5.0, -6.0], 0.5),
            vec![5.0, -6.0]
        );
        // Orthogonal query: equal logits, so the output is the mean of the values.
        let o = attention_f64(
            &[0.0, 0.0],
            &[1.0, 0.0, 0.0, 1.0],
            &[2.0, 0.0, 0.0, 4.0],
            1.0,
        );
        assert_eq!(o, vec![1.0, 2.0]);
        assert!((l2_distance(&[3.0, 4.0], &[0.0, 0.0]) - 5.0).abs() < 1e-12);
    }
}
