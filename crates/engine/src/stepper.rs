//! What happens to one sequence's logits after each forward pass: sample, log-probabilities, end-of-generation,
//! incremental detokenization, stop strings and the token budget. [`crate::Session`] and the serving scheduler
//! both drive sequences through this, so a served request and `baimo run` end and stream text identically.

use baimo_tokenize::{StreamDecoder, Tokenizer};

use crate::logprobs::{log_softmax, top_logprobs};
use crate::{FinishReason, GenerateOptions, GeneratedToken, Sampler, StopMatcher, TopLogprob};

/// The outcome of one [`Stepper::step`].
#[derive(Debug, Default)]
pub struct StepOutput {
    /// The sampled token, unless it was an end-of-generation token (those are not part of the completion).
    pub token: Option<GeneratedToken>,
    /// Text released by this step (possibly empty).
    pub text: String,
    /// Set when the sequence is finished; then `text` already includes the flushed tail.
    pub finish: Option<FinishReason>,
}

pub struct Stepper<'t> {
    tokenizer: &'t Tokenizer,
    sampler: Sampler,
    stop: StopMatcher,
    decoder: StreamDecoder<'t>,
    /// Prompt and generated ids: the penalty window.
    history: Vec<u32>,
    generated: usize,
    max_tokens: usize,
    logprobs: Option<usize>,
    ignore_eos: bool,
}

impl<'t> Stepper<'t> {
    pub fn new(tokenizer: &'t Tokenizer, prompt: &[u32], opts: &GenerateOptions) -> Self {
        Stepper {
            tokenizer,
            sampler: Sampler::new(opts.sampling.clone()),
            stop: StopMatcher::new(opts.stop.clone()),
            decoder: StreamDecoder::new(tokenizer),
            history: prompt.to_vec(),
            generated: 0,
            max_tokens: opts.max_tokens,
            logprobs: opts.logprobs,
            ignore_eos: opts.ignore_eos,
        }
    }

    /// Completion tokens so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// True when `max_tokens` is 0: nothing may be generated at all.
    pub fn exhausted(&self) -> bool {
        self.generated >= self.max_tokens
    }

    /// Consumes the logits of the last position.
    pub fn step(&mut self, logits: &[f32]) -> StepOutput {
        let id = self.sampler.sample(logits, &self.history);
        let (logprob, top) = match self.logprobs {
            Some(k) => {
                let lp = log_softmax(logits);
                let top = top_logprobs(&lp, k)
                    .into_iter()
                    .map(|(id, logprob)| TopLogprob {
                        id,
                        text: piece(self.tokenizer, id),
                        logprob,
                    })
                    .collect();
                (
                    lp.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY),
                    top,
                )
            }
            None => (f32::NAN, Vec::new()),
        };
        self.history.push(id);
        if !self.ignore_eos && self.tokenizer.is_eog(id) {
            return self.finish_with(FinishReason::Stop, None, String::new());
        }
        self.generated += 1;
        let token = GeneratedToken {
            id,
            text: piece(self.tokenizer, id),
            logprob,
            top_logprobs: top,
        };
        let out = self.stop.push(&self.decoder.push(id));
        if out.stopped {
            return StepOutput {
                token: Some(token),
                text: out.emit,
                finish: Some(FinishReason::Stop),
            };
        }
        if self.generated >= self.max_tokens {
            return self.finish_with(FinishReason::Length, Some(token), out.emit);
        }
        StepOutput {
            token: Some(token),
            text: out.emit,
            finish: None,
        }
    }

    /// Ends the sequence from outside (the context is full): flushes held text.
    pub fn finish(&mut self, reason: FinishReason) -> StepOutput {
        self.finish_with(reason, None, String::new())
    }

    /// Flushes bytes held for UTF-8 completeness, then text held as a possible stop-string prefix.
    fn finish_with(
        &mut self,
        reason: FinishReason,
        token: Option<GeneratedToken>,
        mut text: String,
    ) -> StepOutput {
        let tail = self.stop.push(&self.decoder.finish());
        text.push_str(&tail.emit);
        let finish = if tail.stopped {
            FinishReason::Stop
        } else {
            text.push_str(&self.stop.finish());
            reason
        };
        StepOutput {
            token,
            text,
            finish: Some(finish),
        }
    }
}

pub(crate) fn piece(tokenizer: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(&tokenizer.token_bytes(id)).into_owned()
}
