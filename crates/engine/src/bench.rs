//! Timing prompt processing and generation the way llama.cpp's `llama-bench` does
//! (`tools/llama-bench/llama-bench.cpp`: `test_prompt`, `test_gen`), so `baimo bench` and llama-bench
//! figures measure the same work:
//!
//! - **ppN**: one forward pass over N random tokens on a cache holding `depth` tokens of context;
//! - **tgN**: N single-token forward passes (random tokens, no sampling) after `depth` tokens of context;
//! - the `depth` context is computed once (untimed) and reused by truncating the cache back to it, as
//!   llama-bench restores its saved sequence state instead of recomputing it per repetition.
//!
//! The decode limits ([`DecodeLimits`]) are the two roofline bounds of one decode step: bytes read
//! (weights + KV cache) over memory bandwidth, and floating-point work over the cores' arithmetic peak.

use std::path::Path;
use std::time::{Duration, Instant};

use baimo_formats::gguf::GgufFile;
use baimo_models::{KvCache, Logits, ModelConfig, Transformer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Result;

/// Bytes per cached key or value element: [`KvCache`] keeps keys and values in f32.
pub const KV_BYTES_PER_ELEMENT: u64 = 4;

/// Depth context is filled in chunks of this many tokens, so attention scores stay small.
const DEPTH_CHUNK: usize = 512;

/// What one test measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKind {
    /// One forward pass over `n` tokens (llama-bench `ppN`).
    Prompt,
    /// `n` single-token forward passes (llama-bench `tgN`).
    Gen,
}

/// One llama-bench-style test: `kind` over `n` tokens after `depth` tokens of context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestSpec {
    pub kind: TestKind,
    pub n: usize,
    pub depth: usize,
}

impl TestSpec {
    /// llama-bench's label: `pp512`, `tg128`, `tg128 @ d4096`.
    pub fn name(&self) -> String {
        let k = match self.kind {
            TestKind::Prompt => "pp",
            TestKind::Gen => "tg",
        };
        if self.depth > 0 {
            format!("{k}{} @ d{}", self.n, self.depth)
        } else {
            format!("{k}{}", self.n)
        }
    }
}

/// Runs tests on one model with one cache sized for the largest test.
pub struct Bencher<'m> {
    model: &'m Transformer,
    cache: KvCache,
    rng: StdRng,
    vocab: u32,
    /// Length of the random context prefix currently valid in `cache`.
    context: Vec<u32>,
}

impl<'m> Bencher<'m> {
    /// `ctx`: cache size (the largest `depth + n` of the tests); `vocab`: random tokens are drawn from
    /// `0..vocab` (the tokenizer's vocabulary, which may be smaller than the model's padded one).
    pub fn new(model: &'m Transformer, ctx: usize, vocab: usize, seed: u64) -> Bencher<'m> {
        let vocab = vocab.min(model.config().vocab_size).max(1) as u32;
        Bencher {
            model,
            cache: KvCache::new(model.config(), ctx.max(1)),
            rng: StdRng::seed_from_u64(seed),
            vocab,
            context: Vec::new(),
        }
    }

    fn random_tokens(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.rng.gen_range(0..self.vocab)).collect()
    }

    /// One token through a fresh cache: the "first token" of load-to-first-token.
    pub fn first_token(&mut self) -> Result<Duration> {
        let t0 = Instant::now();
        self.cache.clear();
        self.context.clear();
        let tok = self.random_tokens(1);
        self.model.forward(&tok, &mut self.cache, Logits::Last)?;
        self.cache.clear();
        Ok(t0.elapsed())
    }

    /// Leaves exactly `depth` tokens of (reused) random context in the cache.
    fn set_depth(&mut self, depth: usize) -> Result<()> {
        if self.cache.len() < self.context.len() {
            self.context.truncate(self.cache.len());
        }
        if self.context.len() >= depth {
            self.context.truncate(depth);
            self.cache.truncate(depth);
            return Ok(());
        }
        self.cache.truncate(self.context.len());
        while self.context.len() < depth {
            let n = (depth - self.context.len()).min(DEPTH_CHUNK);
            let toks = self.random_tokens(n);
            self.model.forward(&toks, &mut self.cache, Logits::Last)?;
            self.context.extend_from_slice(&toks);
        }
        Ok(())
    }

    /// Runs `spec` once and returns the time of the measured part only.
    pub fn run_once(&mut self, spec: TestSpec) -> Result<Duration> {
        self.set_depth(spec.depth)?;
        let toks = self.random_tokens(spec.n);
        let t0 = Instant::now();
        match spec.kind {
            TestKind::Prompt => {
                if spec.n > 0 {
                    self.model.forward(&toks, &mut self.cache, Logits::Last)?;
                }
            }
            TestKind::Gen => {
                for t in &toks {
                    self.model
                        .forward(std::slice::from_ref(t), &mut self.cache, Logits::Last)?;
                }
            }
        }
        Ok(t0.elapsed())
    }

    /// One untimed warm-up unless `warmup` is false (llama-bench: the whole prompt, or one generated
    /// token), then `reps` timed runs.
    pub fn run(&mut self, spec: TestSpec, reps: usize, warmup: bool) -> Result<Vec<Duration>> {
        if warmup {
            let warm = match spec.kind {
                TestKind::Prompt => spec,
                TestKind::Gen => TestSpec {
                    n: spec.n.min(1),
                    ..spec
                },
            };
            self.run_once(warm)?;
        }
        (0..reps).map(|_| self.run_once(spec)).collect()
    }
}

/// min / median / max of a sample.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for an empty sample. The median of an even count is the mean of the middle two.
    pub fn of(xs: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        };
        Some(Spread {
            min: v[0],
            median,
            max: v[v.len() - 1],
        })
    }
}

/// Tokens per second of each repetition.
pub fn tokens_per_s(n: usize, times: &[Duration]) -> Vec<f64> {
    times
        .iter()
        .map(|t| n as f64 / t.as_secs_f64().max(1e-12))
        .collect()
}

/// What one decode step reads and computes, from the file's tensor table and the config.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DecodeCost {
    /// Weight bytes a decode step reads: every tensor, except an untied `token_embd` of which one row.
    pub weight_bytes: u64,
    /// Floating-point operations of the weight matmuls: 2 per weight element (again one embedding row
    /// when untied, which is a lookup and no arithmetic).
    pub weight_flops: u64,
    /// Key + value bytes per cached position, all layers.
    pub kv_bytes_per_position: u64,
    /// Attention flops per cached position: q·k and p·v, 2 flops per multiply-add, all heads and layers.
    pub attn_flops_per_position: u64,
}

impl DecodeCost {
    /// From a GGUF file's tensor table. `None` for other formats.
    pub fn from_gguf(path: &Path, cfg: &ModelConfig) -> Option<DecodeCost> {
        let g = GgufFile::open(path).ok()?;
        let tied = g.tensor("output.weight").is_none();
        let (mut bytes, mut flops) = (0u64, 0u64);
        for t in &g.tensors {
            if t.name == "token_embd.weight" && !tied {
                bytes += t.row_bytes();
            } else {
                bytes += t.n_bytes();
                if t.dims.len() >= 2 {
                    flops += 2 * t.n_elements();
                }
            }
        }
        Some(DecodeCost {
            weight_bytes: bytes,
            weight_flops: flops,
            ..DecodeCost::attention(cfg)
        })
    }

    fn attention(cfg: &ModelConfig) -> DecodeCost {
        let l = cfg.num_hidden_layers as u64;
        let q = (cfg.num_attention_heads * cfg.head_dim) as u64;
        DecodeCost {
            weight_bytes: 0,
            weight_flops: 0,
            kv_bytes_per_position: kv_bytes_per_position(cfg),
            attn_flops_per_position: l * 2 * 2 * q,
        }
    }

    /// Bytes read by a decode step at mean context length `ctx`.
    pub fn bytes_at(&self, ctx: f64) -> f64 {
        self.weight_bytes as f64 + self.kv_bytes_per_position as f64 * ctx
    }

    /// Flops of a decode step at mean context length `ctx`.
    pub fn flops_at(&self, ctx: f64) -> f64 {
        self.weight_flops as f64 + self.attn_flops_per_position as f64 * ctx
    }
}

/// Key + value bytes of one cached position over all layers, as [`KvCache`] stores them.
pub fn kv_bytes_per_position(cfg: &ModelConfig) -> u64 {
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    cfg.num_hidden_layers as u64 * 2 * kv * KV_BYTES_PER_ELEMENT
}

/// Peak VmHWM / current VmRSS of this process in MiB (Linux `/proc/self/status`), `None` elsewhere.
pub fn rss_mib() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |k: &str| -> Option<f64> {
        let line = s.lines().find(|l| l.starts_with(k))?;
        let kib: f64 = line[k.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_samples() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(
            Spread::of(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median),
            Some(2.5)
        );
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn test_names_follow_llama_bench() {
        let s = TestSpec {
            kind: TestKind::Gen,
            n: 128,
            depth: 4096,
        };
        assert_eq!(s.name(), "tg128 @ d4096");
        let p = TestSpec {
            kind: TestKind::Prompt,
            n: 512,
            depth: 0,
        };
        assert_eq!(p.name(), "pp512");
    }

    #[test]
    fn tokens_per_second() {
        let v = tokens_per_s(10, &[Duration::from_millis(500), Duration::from_secs(2)]);
        assert_eq!(v, vec![20.0, 5.0]);
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let (hwm, rss) = rss_mib().expect("/proc/self/status");
            assert!(hwm >= rss && rss > 0.0, "VmHWM {hwm} VmRSS {rss}");
        }
    }
}
