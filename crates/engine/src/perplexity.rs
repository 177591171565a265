//! Perplexity as llama.cpp's `llama-perplexity` computes it (`perplexity()` in tools/perplexity): the text is
//! tokenized once (with BOS when the vocabulary adds one), cut into chunks of `ctx` tokens; each chunk is
//! evaluated from an empty cache with its first token replaced by BOS, and only the second half of each chunk
//! is scored, so every scored token sees at least ctx/2 tokens of context.

use baimo_models::{KvCache, Logits, Transformer};
use baimo_tokenize::Tokenizer;

use crate::logprobs::log_softmax;
use crate::{EngineError, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    pub ctx: usize,
    pub chunks: usize,
    pub tokens: usize,
    /// Running estimate after each chunk, as llama-perplexity prints `[1]x,[2]y,...`.
    pub per_chunk: Vec<f64>,
    pub ppl: f64,
    /// Standard error of the estimate (llama.cpp's formula).
    pub ppl_err: f64,
}

pub fn perplexity(
    model: &Transformer,
    tokenizer: &Tokenizer,
    text: &str,
    ctx: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    let tokens = tokenizer.encode(text, true, false)?;
    if ctx < 8 || tokens.len() < 2 * ctx {
        return Err(EngineError::TextTooShort {
            tokens: tokens.len(),
            ctx,
        });
    }
    let n_chunks = tokens.len() / ctx;
    let first = ctx / 2;
    let bos = if tokenizer.adds_bos() {
        tokenizer.bos_id()
    } else {
        None
    };
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut per_chunk = Vec::with_capacity(n_chunks);
    let mut cache = KvCache::new(model.config(), ctx);
    for c in 0..n_chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        cache.clear();
        let logits = model
            .forward(&chunk, &mut cache, Logits::All)?
            .to_vec2::<f32>()?;
        for j in first..ctx - 1 {
            let lp = log_softmax(&logits[j]);
            let v = -(lp[tokens[c * ctx + j + 1] as usize] as f64);
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        per_chunk.push((nll / count as f64).exp());
        progress(c + 1, n_chunks);
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = (nll2 / count as f64 - mean * mean).max(0.0);
    let ppl_err = if count > 1 {
        ppl * (var / (count as f64 - 1.0)).sqrt()
    } else {
        0.0
    };
    Ok(PerplexityReport {
        ctx,
        chunks: n_chunks,
        tokens: tokens.len(),
        per_chunk,
        ppl,
        ppl_err,
    })
}
