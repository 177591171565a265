//! Flags shared by run, chat and (later) serve.

use baimo_engine::{GenerateOptions, SamplingParams};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct GenFlags {
    /// A LoRA adapter folder in PEFT format (adapter_config.json + adapter_model.safetensors), applied
    /// on top of the model without merging.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't', env = "BAIMO_THREADS")]
    pub threads: Option<usize>,
    /// Context size in tokens (default: the model's, capped at 4096).
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// Maximum tokens to generate.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Repetition penalty (1 = off), over the last --repeat-last-n tokens.
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed (same seed, same output).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text is generated (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Tokenizer file for llama2.c checkpoints.
    #[arg(long)]
    pub tokenizer: Option<std::path::PathBuf>,
}

impl GenFlags {
    /// Flags over the model's own defaults over Baimo's.
    pub fn options(&self, model_defaults: Option<&SamplingParams>) -> GenerateOptions {
        let mut p = model_defaults.cloned().unwrap_or_default();
        if let Some(v) = self.temperature {
            p.temperature = v;
        }
        if let Some(v) = self.top_k {
            p.top_k = v;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.repeat_penalty {
            p.repeat_penalty = v;
        }
        p.repeat_last_n = self.repeat_last_n;
        p.presence_penalty = self.presence_penalty;
        p.frequency_penalty = self.frequency_penalty;
        p.seed = self.seed;
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: p,
            stop: self.stop.clone(),
            logprobs: None,
            ignore_eos: false,
        }
    }

    pub fn ctx_for(&self, model_ctx: usize) -> usize {
        self.ctx.unwrap_or_else(|| model_ctx.clamp(16, 4096))
    }

    pub fn init_threads(&self) -> anyhow::Result<usize> {
        crate::threads::init(self.threads)
    }
}
