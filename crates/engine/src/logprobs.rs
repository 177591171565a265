//! Log-probabilities of the model's next-token distribution.
//!
//! Used for OpenAI-style `logprobs` / `top_logprobs` and for perplexity. The values are those of the raw
//! distribution (softmax of the logits at temperature 1, no penalties or filters), as the OpenAI API and
//! llama.cpp's `n_probs` report them.
//!
//! Non-finite logits are handled, never panicked on: NaN counts as `-inf` (probability zero); if any logit
//! is `+inf`, the `+inf` tokens share all the mass equally and every other token gets `-inf`.

use std::cmp::Ordering;

/// Replaces NaN by `-inf`, so that every later comparison is a total order.
#[inline]
pub(crate) fn finite_or_neg_inf(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Order "larger logit first, then lower id first"; callers have already removed NaN.
#[inline]
pub(crate) fn desc_then_id(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

/// `(max, log_sum_exp)` of the logits with NaN read as `-inf`, accumulated in f64.
///
/// Returns `None` when no logit is above `-inf` (empty input, or all `-inf`/NaN): the distribution is undefined.
/// When some logit is `+inf`, `max` is `+inf` and `log_sum_exp` is `ln(count of +inf)`, i.e. the `+inf`
/// tokens share the mass; `log_prob(x)` below handles that case.
fn normalizer(logits: &[f32]) -> Option<Normalizer> {
    let max = logits
        .iter()
        .map(|&x| finite_or_neg_inf(x))
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return None;
    }
    if max == f32::INFINITY {
        let n_inf = logits.iter().filter(|&&x| x == f32::INFINITY).count();
        return Some(Normalizer::Infinite {
            ln_count: (n_inf as f64).ln(),
        });
    }
    let max = f64::from(max);
    let sum: f64 = logits
        .iter()
        .map(|&x| (f64::from(finite_or_neg_inf(x)) - max).exp())
        .sum();
    Some(Normalizer::Finite {
        max,
        ln_sum: sum.ln(),
    })
}

#[derive(Clone, Copy, Debug)]
enum Normalizer {
    /// `log p(x) = (x - max) - ln_sum`.
    Finite { max: f64, ln_sum: f64 },
    /// Some logits are `+inf`; they share the mass equally: `log p = -ln_count`.
    Infinite { ln_count: f64 },
}

impl Normalizer {
    #[inline]
    fn log_prob(self, x: f32) -> f32 {
        let x = finite_or_neg_inf(x);
        match self {
            Normalizer::Finite { max, ln_sum } => ((f64::from(x) - max) - ln_sum) as f32,
            Normalizer::Infinite { ln_count } => {
                if x == f32::INFINITY {
                    (-ln_count) as f32
                } else {
                    f32::NEG_INFINITY
                }
            }
        }
    }
}

/// Numerically stable log-softmax: `x_i - max - ln(sum_j exp(x_j - max))`, with the sum in f64.
///
/// NaN logits count as `-inf`. If every logit is `-inf` (or NaN), or the input is empty, every entry is `-inf`
/// (there is no distribution to report).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    match normalizer(logits) {
        Some(n) => logits.iter().map(|&x| n.log_prob(x)).collect(),
        None => vec![f32::NEG_INFINITY; logits.len()],
    }
}

/// The `k` largest log-probabilities as `(token id, logprob)`, largest first, ties broken by the lower id.
///
/// `k` larger than the vocabulary returns every token. NaN entries sort as `-inf`. Selects with
/// `select_nth_unstable_by` and sorts only the `k` kept, so a small `k` over a 150k vocabulary is cheap.
pub fn top_logprobs(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logprobs.len());
    if k == 0 {
        return Vec::new();
    }
    let mut pairs: Vec<(u32, f32)> = logprobs
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, finite_or_neg_inf(x)))
        .collect();
    if k < pairs.len() {
        pairs.select_nth_unstable_by(k - 1, desc_then_id);
        pairs.truncate(k);
    }
    pairs.sort_unstable_by(desc_then_id);
    pairs
}

/// Log-probability of token `id` under `softmax(logits)`, without allocating a whole log-softmax.
///
/// An `id` outside the vocabulary, or a distribution that is undefined (all logits `-inf`/NaN), gives `-inf`,
/// so a perplexity over it comes out infinite rather than silently wrong.
pub fn logprob_of(logits: &[f32], id: u32) -> f32 {
    let Some(&x) = logits.get(id as usize) else {
        return f32::NEG_INFINITY;
    };
    match normalizer(logits) {
        Some(n) => n.log_prob(x),
        None => f32::NEG_INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn log_softmax_matches_hand_computed_values() {
        // softmax([0, ln 2, ln 5]) = [1/8, 2/8, 5/8].
        let lp = log_softmax(&[0.0, 2f32.ln(), 5f32.ln()]);
        let want = [
            (1.0f32 / 8.0).ln(),
            (2.0f32 / 8.0).ln(),
            (5.0f32 / 8.0).ln(),
        ];
        for (a, b) in lp.iter().zip(want) {
            assert!(close(*a, b, 1e-6), "{a} vs {b}");
        }
        let total: f64 = lp.iter().map(|&x| f64::from(x).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn log_softmax_is_stable_for_huge_logits() {
        // A naive exp overflows here; shift invariance means the result equals that of [0, 1, 2].
        let big = log_softmax(&[1e30, 1e30, 1e30]);
        for x in &big {
            assert!(close(*x, -(3f32.ln()), 1e-6));
        }
        let shifted = log_softmax(&[1000.0, 1001.0, 1002.0]);
        let base = log_softmax(&[0.0, 1.0, 2.0]);
        for (a, b) in shifted.iter().zip(&base) {
            assert!(close(*a, *b, 1e-5), "{a} vs {b}");
        }
        // A very negative logit underflows to a finite, very negative log-probability, not NaN.
        let lp = log_softmax(&[0.0, -200.0]);
        assert!(close(lp[1], -200.0, 1e-3));
    }

    #[test]
    fn log_softmax_non_finite_inputs() {
        let lp = log_softmax(&[f32::NAN, 0.0, f32::NEG_INFINITY, 0.0]);
        assert_eq!(lp[0], f32::NEG_INFINITY);
        assert_eq!(lp[2], f32::NEG_INFINITY);
        assert!(close(lp[1], -(2f32.ln()), 1e-6));
        assert!(close(lp[3], -(2f32.ln()), 1e-6));

        let lp = log_softmax(&[f32::INFINITY, 3.0, f32::INFINITY, f32::NAN]);
        assert!(close(lp[0], -(2f32.ln()), 1e-6));
        assert!(close(lp[2], -(2f32.ln()), 1e-6));
        assert_eq!(lp[1], f32::NEG_INFINITY);
        assert_eq!(lp[3], f32::NEG_INFINITY);

        assert!(log_softmax(&[f32::NAN, f32::NEG_INFINITY])
            .iter()
            .all(|&x| x == f32::NEG_INFINITY));
        assert!(log_softmax(&[]).is_empty());
    }

    #[test]
    fn top_logprobs_sorted_desc_ties_by_id() {
        let lp = [-3.0, -1.0, -2.0, -1.0, f32::NAN, -0.5];
        assert_eq!(top_logprobs(&lp, 3), vec![(5, -0.5), (1, -1.0), (3, -1.0)]);
        assert_eq!(top_logprobs(&lp, 1), vec![(5, -0.5)]);
        assert!(top_logprobs(&lp, 0).is_empty());
        let all = top_logprobs(&lp, 100);
        assert_eq!(all.len(), 6);
        assert_eq!(
            all.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![5, 1, 3, 2, 0, 4]
        );
        assert_eq!(all[5].1, f32::NEG_INFINITY);
    }

    #[test]
    fn top_logprobs_matches_full_sort_on_large_vocab() {
        // Deterministic pseudo-random logits with many ties (values quantized to 1/8).
        let mut state = 12345u64;
        let lp: Vec<f32> = (0..50_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) % 200) as f32 / -8.0
            })
            .collect();
        let mut full: Vec<(u32, f32)> =
            lp.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
        full.sort_by(desc_then_id);
        for k in [1, 5, 40, 1000] {
            assert_eq!(top_logprobs(&lp, k), full[..k].to_vec(), "k = {k}");
        }
    }

    #[test]
    fn logprob_of_agrees_with_log_softmax() {
        let logits = [1.5, -0.25, 3.0, 0.0, 2.0];
        let lp = log_softmax(&logits);
        for id in 0..logits.len() as u32 {
            assert!(close(logprob_of(&logits, id), lp[id as usize], 1e-7));
        }
        assert_eq!(logprob_of(&logits, 5), f32::NEG_INFINITY);
        assert_eq!(logprob_of(&[], 0), f32::NEG_INFINITY);
        assert_eq!(logprob_of(&[f32::NAN, f32::NAN], 1), f32::NEG_INFINITY);
        // Uniform over 4: ln(1/4).
        assert!(close(logprob_of(&[7.0; 4], 2), -(4f32.ln()), 1e-6));
    }
}
