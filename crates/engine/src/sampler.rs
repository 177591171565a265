//! Token sampling: penalties, top-k, top-p, min-p, temperature, then a seeded draw.
//!
//! The order is llama.cpp's default sampler chain (`common/sampling.cpp`, `common_sampler_init`, with the
//! samplers it leaves off by default skipped): `penalties → top_k → top_p → min_p → temp → dist`. Top-p and
//! min-p therefore see the temperature-1 distribution of what top-k kept, and temperature only reshapes the
//! survivors, exactly as there.
//!
//! Robustness: NaN logits count as `-inf`, `+inf` logits as the largest finite value (they take all the mass),
//! and whatever the filters do at least one token (the most likely) survives. Parameters outside their range
//! turn the stage off rather than panic (a NaN `top_p` is "off", a `repeat_penalty <= 0` is "off").

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::logprobs::{desc_then_id, finite_or_neg_inf};

/// How the next token is chosen. Field meanings and defaults follow llama.cpp's `common_params_sampling`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Divides the logits before the draw; `<= 0` (or NaN) means greedy: argmax after penalties.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set whose probability reaches `top_p`; 1 = off.
    pub top_p: f32,
    /// Keep tokens whose probability is at least `min_p` times the top one's; 0 = off.
    pub min_p: f32,
    /// CTRL repetition penalty (Keskar et al. 2019) as llama.cpp applies it: positive logits are divided,
    /// negative ones multiplied, once per distinct token in the window; 1 = off.
    pub repeat_penalty: f32,
    /// The penalty window: the last `repeat_last_n` tokens of the history; 0 = no penalties at all (as in
    /// llama.cpp, the window also bounds the frequency and presence penalties).
    pub repeat_last_n: usize,
    /// OpenAI presence penalty: subtracted once from every token that occurs in the window.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: subtracted `count` times from a token that occurs `count` times in the window.
    pub frequency_penalty: f32,
    /// Seed of the draw; `None` seeds from the operating system's entropy.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults (`common/common.h`): temp 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Plain argmax: temperature 0, every filter and penalty off.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }

    /// True when [`Sampler::sample`] takes the argmax instead of drawing (temperature `<= 0` or NaN).
    pub fn is_greedy(&self) -> bool {
        // NaN is greedy too.
        self.temperature.is_nan() || self.temperature <= 0.0
    }

    fn repeat_penalty_active(&self) -> bool {
        self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0 && self.repeat_penalty != 1.0
    }

    fn penalties_active(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty_active()
                || (self.frequency_penalty.is_finite() && self.frequency_penalty != 0.0)
                || (self.presence_penalty.is_finite() && self.presence_penalty != 0.0))
    }
}

/// Applies the repeat, frequency and presence penalties of `params` to `logits` in place.
///
/// Mirrors llama.cpp's `llama_sampler_penalties_apply`: for each distinct token `t` occurring `count` times in
/// the last `repeat_last_n` entries of `history`, first `logit /= repeat_penalty` if `logit > 0` else
/// `logit *= repeat_penalty`, then `logit -= count * frequency_penalty + presence_penalty`. History ids outside
/// the vocabulary are ignored. [`Sampler::sample`] does this itself; this is public for callers that want to
/// report the penalised distribution.
pub fn apply_penalties(logits: &mut [f32], history: &[u32], params: &SamplingParams) {
    apply_penalties_with(logits, history, params, &mut Vec::new());
}

fn apply_penalties_with(
    logits: &mut [f32],
    history: &[u32],
    params: &SamplingParams,
    window: &mut Vec<u32>,
) {
    if !params.penalties_active() || history.is_empty() {
        return;
    }
    let start = history.len().saturating_sub(params.repeat_last_n);
    window.clear();
    window.extend_from_slice(&history[start..]);
    window.sort_unstable();
    let repeat = params
        .repeat_penalty_active()
        .then_some(params.repeat_penalty);
    let freq = if params.frequency_penalty.is_finite() {
        params.frequency_penalty
    } else {
        0.0
    };
    let presence = if params.presence_penalty.is_finite() {
        params.presence_penalty
    } else {
        0.0
    };
    // The window is sorted, so each run of equal ids is one distinct token and its length is the count.
    for run in window.chunk_by(|a, b| a == b) {
        let Some(logit) = logits.get_mut(run[0] as usize) else {
            continue;
        };
        if let Some(p) = repeat {
            if *logit > 0.0 {
                *logit /= p;
            } else {
                *logit *= p;
            }
        }
        *logit -= run.len() as f32 * freq + presence;
    }
}

/// Chooses next tokens. Holds the RNG, so one `Sampler` per sequence gives reproducible output for a seed.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Scratch buffers reused across calls (the vocabulary can be 150k entries).
    logits: Vec<f32>,
    candidates: Vec<(u32, f32)>,
    window: Vec<u32>,
    weights: Vec<f64>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Sampler {
            params,
            rng,
            logits: Vec::new(),
            candidates: Vec::new(),
            window: Vec::new(),
            weights: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry), penalising tokens of `history` (the
    /// sequence so far, prompt included if the caller wants it penalised, as llama-cli does).
    ///
    /// Greedy mode never touches the RNG; sampling mode draws one `f64` per call (none when no logit is
    /// finite), so the same seed and the same sequence of logits and histories give the same tokens.
    ///
    /// # Panics
    /// If `logits` is empty (a model with no vocabulary is a bug upstream).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        assert!(
            !logits.is_empty(),
            "Sampler::sample called with empty logits"
        );
        self.logits.clear();
        self.logits.extend(logits.iter().map(|&x| sanitize(x)));
        apply_penalties_with(&mut self.logits, history, &self.params, &mut self.window);
        if self.params.is_greedy() {
            return argmax(&self.logits);
        }

        self.candidates.clear();
        self.candidates.extend(
            self.logits
                .iter()
                .enumerate()
                .filter(|(_, &l)| l > f32::NEG_INFINITY)
                .map(|(i, &l)| (i as u32, l)),
        );
        if self.candidates.is_empty() {
            // Every logit was -inf or NaN: nothing is more likely than anything else.
            return argmax(&self.logits);
        }
        let sorted = top_k(&mut self.candidates, self.params.top_k);
        top_p(&mut self.candidates, self.params.top_p, sorted);
        min_p(&mut self.candidates, self.params.min_p);
        let u: f64 = self.rng.gen();
        draw(
            &self.candidates,
            self.params.temperature,
            u,
            &mut self.weights,
        )
    }
}

/// NaN → `-inf` (never chosen); `+inf` → `f32::MAX` so differences stay finite and it still takes all the mass.
#[inline]
fn sanitize(x: f32) -> f32 {
    let x = finite_or_neg_inf(x);
    if x == f32::INFINITY {
        f32::MAX
    } else {
        x
    }
}

/// Index of the largest value, lowest index on ties. `values` is non-empty and NaN-free.
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Keeps the `k` largest (ties by lower id) and sorts them; returns whether `c` is now sorted.
/// `k == 0` or `k >= len` leaves `c` alone (and unsorted): no full sort of the vocabulary.
fn top_k(c: &mut Vec<(u32, f32)>, k: usize) -> bool {
    if k == 0 || k >= c.len() {
        return false;
    }
    c.select_nth_unstable_by(k - 1, desc_then_id);
    c.truncate(k);
    c.sort_unstable_by(desc_then_id);
    true
}

/// Sum of `exp(l - max)` over the candidates, in f64, and `max`.
fn exp_sum(c: &[(u32, f32)]) -> (f64, f64) {
    let max = f64::from(c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max));
    let sum = c.iter().map(|x| (f64::from(x.1) - max).exp()).sum();
    (max, sum)
}

/// Nucleus filter (Holtzman et al. 2019) as llama.cpp's `llama_sampler_top_p_apply`: keep the shortest
/// most-likely-first prefix whose probability reaches `p` (at least one token).
///
/// When `c` is not sorted yet (top-k off), the prefix is sorted progressively, 64, 128, 256, … entries at a time
/// with `select_nth_unstable_by`, until it holds mass `p`, instead of sorting the whole vocabulary.
fn top_p(c: &mut Vec<(u32, f32)>, p: f32, sorted: bool) {
    // NaN is off too.
    if p.is_nan() || p >= 1.0 || c.len() <= 1 {
        return;
    }
    let (max, total) = exp_sum(c);
    let target = f64::from(p) * total;
    let n = c.len();
    let mut done = 0; // c[..done] is sorted, and no later entry beats any of it
    let mut upto = if sorted { n } else { 64.min(n) };
    let mut cum = 0.0;
    loop {
        if upto > done && !sorted {
            let rest = &mut c[done..];
            let m = upto - done;
            if m < rest.len() {
                rest.select_nth_unstable_by(m - 1, desc_then_id);
            }
            rest[..m].sort_unstable_by(desc_then_id);
        }
        for i in done..upto {
            cum += (f64::from(c[i].1) - max).exp();
            if cum >= target {
                c.truncate(i + 1);
                return;
            }
        }
        if upto == n {
            // Rounding kept the sum just short of `target`: keep everything.
            return;
        }
        done = upto;
        upto = (upto * 2).min(n);
    }
}

/// Min-p filter (Nguyen et al. 2024) as llama.cpp's `llama_sampler_min_p_apply`: keep tokens with
/// `p >= min_p * p_max`, i.e. `logit >= max_logit + ln(min_p)`. Keeps the order of `c`.
fn min_p(c: &mut Vec<(u32, f32)>, min_p: f32) {
    if min_p.is_nan() || min_p <= 0.0 || c.len() <= 1 {
        return;
    }
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    // min_p >= 1 would drop even the top token; keep the top (and its ties) instead.
    let threshold = if min_p >= 1.0 { max } else { max + min_p.ln() };
    c.retain(|x| x.1 >= threshold);
}

/// Softmax of `logits / temperature` over the candidates (f64), then the token whose cumulative probability
/// first exceeds `u ∈ [0, 1)`.
fn draw(c: &[(u32, f32)], temperature: f32, u: f64, weights: &mut Vec<f64>) -> u32 {
    if c.len() == 1 {
        return c[0].0;
    }
    let max = f64::from(c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max));
    let t = f64::from(temperature);
    weights.clear();
    weights.extend(c.iter().map(|x| ((f64::from(x.1) - max) / t).exp()));
    let total: f64 = weights.iter().sum();
    let r = u * total;
    let mut cum = 0.0;
    let mut last = c[0].0;
    for (x, &w) in c.iter().zip(weights.iter()) {
        if w > 0.0 {
            cum += w;
            last = x.0;
            if r < cum {
                return x.0;
            }
        }
    }
    // Only reachable through rounding (r == total): the last token with any weight.
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(logits: &[f32]) -> Vec<(u32, f32)> {
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect()
    }

    fn ids(c: &[(u32, f32)]) -> Vec<u32> {
        let mut v: Vec<u32> = c.iter().map(|x| x.0).collect();
        v.sort_unstable();
        v
    }

    /// Logits whose softmax is exactly `probs`.
    fn ln(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    fn only(p: SamplingParams) -> SamplingParams {
        SamplingParams { seed: Some(7), ..p }
    }

    /// All filters and penalties off, temperature 1, fixed seed.
    fn plain() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..SamplingParams::greedy()
        }
    }

    fn frequencies(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut s = Sampler::new(params);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.sample(logits, &[]) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
        let w: Vec<f64> = logits.iter().map(|&l| (f64::from(l) / t).exp()).collect();
        let s: f64 = w.iter().sum();
        w.iter().map(|x| x / s).collect()
    }

    #[test]
    fn defaults_follow_llama_cpp() {
        let d = SamplingParams::default();
        assert_eq!(
            (d.temperature, d.top_k, d.top_p, d.min_p),
            (0.8, 40, 0.95, 0.05)
        );
        assert_eq!((d.repeat_penalty, d.repeat_last_n), (1.0, 64));
        assert_eq!(
            (d.presence_penalty, d.frequency_penalty, d.seed),
            (0.0, 0.0, None)
        );
        assert!(!d.is_greedy());
        let g = SamplingParams::greedy();
        assert!(g.is_greedy());
        assert_eq!(
            (g.top_k, g.top_p, g.min_p, g.repeat_penalty),
            (0, 1.0, 0.0, 1.0)
        );
        assert!(SamplingParams {
            temperature: f32::NAN,
            ..d
        }
        .is_greedy());
        // Missing fields deserialize to the defaults.
        let p: SamplingParams = serde_json::from_str(r#"{"temperature": 0.2, "seed": 3}"#).unwrap();
        assert_eq!(
            p,
            SamplingParams {
                temperature: 0.2,
                seed: Some(3),
                ..SamplingParams::default()
            }
        );
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative_once_per_distinct_token() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut l = vec![2.0, -1.0, 0.5, 3.0, 0.0];
        // Token 0 occurs twice but is penalised once; 4 has logit 0 (stays 0); 3 is not in the history.
        apply_penalties(&mut l, &[0, 1, 0, 4], &p);
        assert_eq!(l, vec![1.0, -2.0, 0.5, 3.0, 0.0]);
    }

    #[test]
    fn penalty_window_is_the_last_repeat_last_n_tokens() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            repeat_last_n: 2,
            ..SamplingParams::greedy()
        };
        let mut l = vec![4.0, 4.0, 4.0];
        apply_penalties(&mut l, &[2, 0, 1], &p);
        assert_eq!(l, vec![2.0, 2.0, 4.0]);
        // Window longer than the history: everything counts.
        let p = SamplingParams {
            repeat_last_n: 100,
            ..p
        };
        let mut l = vec![4.0, 4.0, 4.0];
        apply_penalties(&mut l, &[2, 0, 1], &p);
        assert_eq!(l, vec![2.0, 2.0, 2.0]);
        // repeat_last_n = 0 turns every penalty off.
        let p = SamplingParams {
            repeat_last_n: 0,
            frequency_penalty: 1.0,
            presence_penalty: 1.0,
            ..p
        };
        let mut l = vec![4.0, 4.0, 4.0];
        apply_penalties(&mut l, &[2, 0, 1], &p);
        assert_eq!(l, vec![4.0, 4.0, 4.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_follow_openai() {
        let p = SamplingParams {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let mut l = vec![1.0; 4];
        apply_penalties(&mut l, &[0, 0, 0, 2], &p);
        // token 0: 1 - 3*0.5 - 0.25; token 2: 1 - 1*0.5 - 0.25; unseen tokens untouched.
        assert_eq!(l, vec![-0.75, 1.0, 0.25, 1.0]);
        // Negative penalties encourage repetition.
        let p = SamplingParams {
            frequency_penalty: -1.0,
            presence_penalty: 0.0,
            ..p
        };
        let mut l = vec![0.0; 2];
        apply_penalties(&mut l, &[1, 1], &p);
        assert_eq!(l, vec![0.0, 2.0]);
    }

    #[test]
    fn repeat_penalty_applies_before_frequency_and_presence() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let mut l = vec![2.0, -2.0];
        apply_penalties(&mut l, &[0, 0, 1], &p);
        // 2/2 - 2*0.5 - 0.25 = -0.25 ; -2*2 - 0.5 - 0.25 = -4.75
        assert_eq!(l, vec![-0.25, -4.75]);
    }

    #[test]
    fn penalties_ignore_out_of_vocab_history_and_bad_parameters() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut l = vec![2.0, 2.0];
        apply_penalties(&mut l, &[1, 99, u32::MAX], &p);
        assert_eq!(l, vec![2.0, 1.0]);
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let p = SamplingParams {
                repeat_penalty: bad,
                frequency_penalty: f32::NAN,
                ..SamplingParams::greedy()
            };
            let mut l = vec![2.0, -2.0];
            apply_penalties(&mut l, &[0, 1], &p);
            assert_eq!(l, vec![2.0, -2.0], "repeat_penalty {bad}");
        }
    }

    #[test]
    fn penalties_change_the_greedy_choice() {
        let logits = [1.0, 3.0, 2.0];
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&logits, &[]), 1);
        assert_eq!(s.sample(&logits, &[1]), 2); // 3/2 = 1.5 < 2
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 5.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&logits, &[1, 2]), 0);
    }

    #[test]
    fn greedy_takes_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0], &[]), 1);
        assert_eq!(s.sample(&[5.0, 5.0, 5.0], &[]), 0);
        assert_eq!(s.sample(&[-1.0, -0.5, -0.5], &[]), 1);
        // Temperature <= 0 is greedy even with filters set.
        let mut s = Sampler::new(SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        });
        assert_eq!(s.sample(&[0.0, 0.1, 0.1, 0.0], &[]), 1);
    }

    #[test]
    fn top_k_keeps_the_k_largest_ties_by_id() {
        let mut c = cands(&[1.0, 5.0, 3.0, 5.0, 2.0]);
        assert!(top_k(&mut c, 3));
        assert_eq!(c, vec![(1, 5.0), (3, 5.0), (2, 3.0)]);
        let mut c = cands(&[2.0, 2.0, 2.0, 2.0]);
        top_k(&mut c, 2);
        assert_eq!(ids(&c), vec![0, 1]);
        // Off: k = 0 or k >= n leaves the set as it was.
        let mut c = cands(&[1.0, 5.0, 3.0]);
        assert!(!top_k(&mut c, 0));
        assert!(!top_k(&mut c, 3));
        assert_eq!(c, cands(&[1.0, 5.0, 3.0]));
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        let probs = [0.125, 0.5, 0.125, 0.25];
        let keep = |p: f32| {
            let mut c = cands(&ln(&probs));
            top_p(&mut c, p, false);
            ids(&c)
        };
        assert_eq!(keep(0.3), vec![1]);
        assert_eq!(keep(0.6), vec![1, 3]);
        assert_eq!(keep(0.74), vec![1, 3]);
        // 0.5 + 0.25 + 0.125: the two 0.125 tie, the lower id wins.
        assert_eq!(keep(0.76), vec![0, 1, 3]);
        assert_eq!(keep(0.9), vec![0, 1, 2, 3]);
        assert_eq!(keep(0.0), vec![1]);
        assert_eq!(keep(1.0), vec![0, 1, 2, 3]);
        assert_eq!(keep(f32::NAN), vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_p_progressive_sort_matches_full_sort_on_large_vocab() {
        let mut state = 99u64;
        let logits: Vec<f32> = (0..20_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 4096) as f32 / 256.0
            })
            .collect();
        let probs = softmax(&logits, 1.0);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        for p in [0.001, 0.05, 0.5, 0.9, 0.999] {
            let mut cum = 0.0;
            let n = order
                .iter()
                .position(|&i| {
                    cum += probs[i];
                    cum >= f64::from(p)
                })
                .unwrap()
                + 1;
            let mut want: Vec<u32> = order[..n].iter().map(|&i| i as u32).collect();
            want.sort_unstable();
            let mut c = cands(&logits);
            top_p(&mut c, p, false);
            assert_eq!(ids(&c), want, "p = {p}");
            // The survivors come out sorted, most likely first.
            assert!(c.windows(2).all(|w| desc_then_id(&w[0], &w[1]).is_le()));
        }
    }

    #[test]
    fn min_p_keeps_tokens_above_a_fraction_of_the_top() {
        let probs = [0.125, 0.5, 0.125, 0.25];
        let keep = |m: f32| {
            let mut c = cands(&ln(&probs));
            min_p(&mut c, m);
            ids(&c)
        };
        assert_eq!(keep(0.3), vec![1, 3]); // threshold 0.15
        assert_eq!(keep(0.2), vec![0, 1, 2, 3]); // threshold 0.1
        assert_eq!(keep(0.6), vec![1]);
        assert_eq!(keep(1.5), vec![1]); // would keep nothing: the top survives
        assert_eq!(keep(0.0), vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_p_sees_the_distribution_renormalised_by_top_k() {
        // probs 0.4 0.3 0.2 0.1. Alone, top-p 0.5 keeps {0, 1}; after top-k 2 the top token has 4/7 >= 0.5.
        let logits = ln(&[0.4, 0.3, 0.2, 0.1]);
        let f = frequencies(
            only(SamplingParams {
                top_k: 0,
                top_p: 0.5,
                ..plain()
            }),
            &logits,
            4000,
        );
        assert!(
            f[0] > 0.0 && f[1] > 0.0 && f[2] == 0.0 && f[3] == 0.0,
            "{f:?}"
        );
        let f = frequencies(
            only(SamplingParams {
                top_k: 2,
                top_p: 0.5,
                ..plain()
            }),
            &logits,
            4000,
        );
        assert_eq!(f, vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn sampling_only_draws_from_the_filtered_set() {
        let mut state = 5u64;
        let logits: Vec<f32> = (0..151_936)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 10_000) as f32 / 1000.0
            })
            .collect();
        let mut c = cands(&logits);
        top_k(&mut c, 40);
        let allowed = ids(&c);
        let mut s = Sampler::new(SamplingParams {
            top_k: 40,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..30 {
            let t = s.sample(&logits, &[]);
            assert!(allowed.binary_search(&t).is_ok(), "{t} not in top-40");
        }
        // The llama.cpp default chain on a large vocabulary, top-k off: still only plausible tokens.
        let mut s = Sampler::new(SamplingParams {
            top_k: 0,
            seed: Some(1),
            ..Default::default()
        });
        let max = logits.iter().cloned().fold(f32::MIN, f32::max);
        for _ in 0..10 {
            let t = s.sample(&logits, &[]);
            assert!(logits[t as usize] >= max + 0.05f32.ln() - 1e-6);
        }
    }

    #[test]
    fn frequencies_follow_softmax_chi_square() {
        let logits = [0.0, 1.0, -0.5, 0.3];
        let n = 20_000;
        let f = frequencies(plain(), &logits, n);
        let p = softmax(&logits, 1.0);
        let chi2: f64 = f
            .iter()
            .zip(&p)
            .map(|(o, e)| (o - e).powi(2) * n as f64 / e)
            .sum();
        // 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
        assert!(
            chi2 < 16.27,
            "chi2 = {chi2}, observed {f:?}, expected {p:?}"
        );
        for (o, e) in f.iter().zip(&p) {
            assert!((o - e).abs() < 0.015, "observed {f:?}, expected {p:?}");
        }
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [0.0, 2f32.ln()]; // probs 1/3, 2/3 at T = 1
        let n = 20_000;
        for t in [0.5f32, 1.0, 2.0] {
            let f = frequencies(
                SamplingParams {
                    temperature: t,
                    ..plain()
                },
                &logits,
                n,
            );
            // T = 0.5: 4/5; T = 1: 2/3; T = 2: sqrt2 / (1 + sqrt2) ≈ 0.586.
            let want = softmax(&logits, f64::from(t))[1];
            assert!((f[1] - want).abs() < 0.015, "T = {t}: {} vs {want}", f[1]);
        }
        let cold = frequencies(
            SamplingParams {
                temperature: 0.05,
                ..plain()
            },
            &logits,
            2000,
        );
        assert!(cold[1] > 0.99);
        let hot = frequencies(
            SamplingParams {
                temperature: 1000.0,
                ..plain()
            },
            &logits,
            n,
        );
        assert!((hot[1] - 0.5).abs() < 0.015);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let run = |seed: u64| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                temperature: 1.0,
                ..Default::default()
            });
            let mut history = Vec::new();
            for step in 0..300u32 {
                // A different, flat-ish distribution at each step.
                let logits: Vec<f32> = (0..100u32)
                    .map(|i| ((i * 7 + step * 13) % 17) as f32 * 0.1)
                    .collect();
                let t = s.sample(&logits, &history);
                history.push(t);
            }
            history
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        // Unseeded samplers differ from each other (entropy), with overwhelming probability.
        let logits = vec![0.0f32; 1000];
        let mut a = Sampler::new(SamplingParams {
            seed: None,
            ..plain()
        });
        let mut b = Sampler::new(SamplingParams {
            seed: None,
            ..plain()
        });
        let sa: Vec<u32> = (0..20).map(|_| a.sample(&logits, &[])).collect();
        let sb: Vec<u32> = (0..20).map(|_| b.sample(&logits, &[])).collect();
        assert_ne!(sa, sb);
    }

    #[test]
    fn nan_and_infinite_logits_do_not_panic() {
        let mut g = Sampler::new(SamplingParams::greedy());
        let mut s = Sampler::new(SamplingParams {
            seed: Some(3),
            ..Default::default()
        });
        let mut plain_s = Sampler::new(plain());
        // NaN is never chosen.
        let l = [f32::NAN, 1.0, f32::NAN, 0.5];
        assert_eq!(g.sample(&l, &[]), 1);
        for _ in 0..200 {
            let t = plain_s.sample(&l, &[]);
            assert!(t == 1 || t == 3);
        }
        // +inf takes all the mass; ties between +inf share it.
        let l = [0.0, f32::INFINITY, 3.0, f32::NEG_INFINITY];
        assert_eq!(g.sample(&l, &[]), 1);
        for _ in 0..50 {
            assert_eq!(s.sample(&l, &[]), 1);
            assert_eq!(plain_s.sample(&l, &[]), 1);
        }
        let l = [f32::INFINITY, 0.0, f32::INFINITY];
        let f = frequencies(plain(), &l, 2000);
        assert!(f[1] == 0.0 && f[0] > 0.4 && f[2] > 0.4, "{f:?}");
        // Nothing finite at all: token 0, no panic.
        for l in [vec![f32::NAN; 5], vec![f32::NEG_INFINITY; 5]] {
            assert_eq!(g.sample(&l, &[]), 0);
            assert_eq!(s.sample(&l, &[]), 0);
        }
        // Penalties on non-finite logits stay non-NaN.
        let mut p = Sampler::new(SamplingParams {
            repeat_penalty: 1.3,
            frequency_penalty: 1.0,
            seed: Some(1),
            ..Default::default()
        });
        let l = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1.0];
        assert_eq!(p.sample(&l, &[0, 1, 2, 3]), 0);
    }

    #[test]
    fn filters_always_leave_one_token() {
        let logits = [0.5, 2.0, 1.0, 2.0];
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.0,
            min_p: 5.0,
            top_k: 0,
            temperature: 1.0,
            seed: Some(9),
            ..Default::default()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&logits, &[]), 1);
        }
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            seed: Some(9),
            ..Default::default()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&logits, &[]), 1);
        }
        // A one-token vocabulary.
        let mut s = Sampler::new(SamplingParams {
            seed: Some(9),
            ..Default::default()
        });
        assert_eq!(s.sample(&[-3.0], &[0, 0]), 0);
    }

    #[test]
    fn draw_inverts_the_cumulative_distribution() {
        let c = cands(&ln(&[0.25, 0.5, 0.25]));
        let mut w = Vec::new();
        assert_eq!(draw(&c, 1.0, 0.0, &mut w), 0);
        assert_eq!(draw(&c, 1.0, 0.24, &mut w), 0);
        assert_eq!(draw(&c, 1.0, 0.26, &mut w), 1);
        assert_eq!(draw(&c, 1.0, 0.74, &mut w), 1);
        assert_eq!(draw(&c, 1.0, 0.76, &mut w), 2);
        assert_eq!(draw(&c, 1.0, 1.0 - f64::EPSILON, &mut w), 2);
    }
}
