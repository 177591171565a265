//! Autoregressive generation over one sequence: prefill, then sample token by token until EOS/EOT, a stop
//! string, or the token budget. A [`Session`] keeps its KV cache between calls and reuses the longest
//! common prefix of the new prompt (the next turn of a chat only prefills the new messages).

use std::time::{Duration, Instant};

use baimo_models::{KvCache, Logits, Transformer};
use baimo_tokenize::Tokenizer;

use crate::stepper::Stepper;
use crate::{EngineError, Result, SamplingParams};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Return the top-K log-probabilities at each generated position (natural log, temperature 1, before
    /// penalties and filters).
    pub logprobs: Option<usize>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            logprobs: None,
            ignore_eos: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TopLogprob {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GeneratedToken {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<GeneratedToken>,
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the cache.
    pub cached_tokens: usize,
    pub finish_reason: FinishReason,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    pub fn completion_tokens(&self) -> usize {
        self.tokens.len()
    }
}

/// One sequence with its KV cache.
pub struct Session {
    cache: KvCache,
    /// Tokens whose keys/values are in `cache`.
    tokens: Vec<u32>,
}

impl Session {
    pub fn new(model: &Transformer, ctx: usize) -> Session {
        Session {
            cache: KvCache::new(model.config(), ctx),
            tokens: Vec::new(),
        }
    }
    pub fn ctx(&self) -> usize {
        self.cache.max_len()
    }
    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Generates a continuation of `prompt`. `on_text` receives each piece of finished text as it becomes
    /// available (valid UTF-8, stop strings held back); returning `false` stops generation.
    pub fn generate(
        &mut self,
        model: &Transformer,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let ctx = self.ctx();
        if prompt.len() > ctx {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                ctx,
            });
        }
        // Reuse the cached prefix; always recompute at least the last prompt token to get its logits.
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        self.cache.truncate(common);
        self.tokens.truncate(common);

        let t0 = Instant::now();
        let mut logits = model
            .forward(&prompt[common..], &mut self.cache, Logits::Last)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.tokens.extend_from_slice(&prompt[common..]);
        let prefill_time = t0.elapsed();

        let t1 = Instant::now();
        let mut stepper = Stepper::new(tokenizer, prompt, opts);
        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Length;
        let mut keep_going = true;
        // Prompt plus completion never exceed the context window: the token sampled from the last position
        // would be token ctx + 1.
        let mut out = if stepper.exhausted() || self.tokens.len() >= ctx {
            stepper.finish(FinishReason::Length)
        } else {
            stepper.step(&logits)
        };
        loop {
            if let Some(t) = out.token.take() {
                tokens.push(t);
            }
            if !out.text.is_empty() {
                text.push_str(&out.text);
                keep_going = on_text(&out.text);
            }
            if let Some(f) = out.finish {
                finish = f;
                break;
            }
            if !keep_going {
                break;
            }
            let Some(last) = tokens.last().map(|t| t.id) else {
                break;
            };
            logits = model
                .forward(&[last], &mut self.cache, Logits::Last)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            self.tokens.push(last);
            out = if self.tokens.len() >= ctx {
                stepper.finish(FinishReason::Length)
            } else {
                stepper.step(&logits)
            };
        }
        Ok(Generation {
            text,
            tokens,
            prompt_tokens: prompt.len(),
            cached_tokens: common,
            finish_reason: finish,
            prefill_time,
            decode_time: t1.elapsed(),
        })
    }
}
