//! `baimo finetune`: LoRA fine-tuning on JSONL chat data, with the model's own chat template.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use baimo_models::Transformer;
use baimo_store::ModelStore;
use baimo_train::data::DataFormat;
use baimo_train::run::{
    finetune as run_finetune, prepare, DataOptions, Overlong, Progress, RunOptions,
};
use baimo_train::LoraSpec;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::commands::resolve_model;

#[derive(Args)]
pub struct FinetuneArgs {
    /// Base model: path or catalog name (a quantized GGUF is dequantized to f32 for training).
    #[arg(long)]
    pub model: Option<String>,
    /// Training data, JSONL.
    #[arg(long)]
    pub data: PathBuf,
    /// Where the adapter (PEFT format) and checkpoints go.
    #[arg(long)]
    pub out: PathBuf,
    /// auto | openai | alpaca | sharegpt
    #[arg(long, default_value = "auto")]
    pub format: DataFormat,
    /// What to do with a record that cannot be used: skip (and report its line) or fail.
    #[arg(long, default_value = "skip", value_parser = ["skip", "fail"])]
    pub on_bad_record: String,
    /// Fraction of the data held out for evaluation (ignored with --eval-file).
    #[arg(long, default_value_t = 0.0)]
    pub eval_fraction: f64,
    #[arg(long)]
    pub eval_file: Option<PathBuf>,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Take the loss on every token, not only the assistant's.
    #[arg(long)]
    pub all_tokens: bool,
    #[arg(long, default_value_t = 1024)]
    pub max_seq_len: usize,
    /// Longer sequences: truncate or skip.
    #[arg(long, default_value = "truncate", value_parser = ["truncate", "skip"])]
    pub overlong: String,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Comma-separated projections to adapt.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub target_modules: Vec<String>,
    #[arg(long)]
    pub rslora: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Save a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Continue from a checkpoint folder (or the output folder: its newest checkpoint) exactly where it
    /// stopped: adapter, optimizer moments, step, data order. A plain adapter folder restarts the schedule.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Pack a step's sequences into forward/backward passes of at most N tokens (each sequence still
    /// attends only to itself; larger matrix products, fewer ops). 0: one sequence per pass (least memory).
    #[arg(long, default_value_t = baimo_train::trainer::PACK_TOKENS)]
    pub pack_tokens: usize,
    /// Keep a quantized (or F16) GGUF base as the file stores it (QLoRA-style): the forward pass is the served
    /// kernels, the backward dequantizes one weight at a time. Uses about the file's memory instead of an f32
    /// copy of the model.
    #[arg(long)]
    pub quantized_base: bool,
    /// Where to train: `cpu` (our kernels), or `cuda` / `cuda:N` (a build with `--features cuda`): the base
    /// dense f32 on the GPU, the same decoder through candle's operations.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, short = 't', env = "BAIMO_THREADS")]
    pub threads: Option<usize>,
    /// Append one JSON line per optimizer step to FILE: step, seconds, loss, lr, grad_norm, tokens (in the
    /// loss), sequence_tokens (all positions processed). For benchmarks and plots.
    #[arg(long, value_name = "FILE")]
    pub step_log: Option<PathBuf>,
}

/// A line above the progress bar, or plain stderr when the bar is hidden (not a terminal).
fn say(bar: &ProgressBar, msg: String) {
    if bar.is_hidden() {
        eprintln!("{msg}");
    } else {
        bar.println(msg);
    }
}

pub fn finetune(store: &ModelStore, a: FinetuneArgs) -> Result<()> {
    if let Some(n) = a.threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if !(0.0..1.0).contains(&a.eval_fraction) {
        bail!("--eval-fraction must be in [0, 1)");
    }
    let device = baimo_models::device(&a.device)?;
    let path = resolve_model(store, a.model.as_deref())?;
    let lm = baimo_engine::load(&path, &Default::default())
        .with_context(|| format!("loading {}", path.display()))?;
    let gguf = lm.info.format == baimo_models::ModelFormat::Gguf;
    let mut model = if lm.model.is_float() || !gguf {
        // Float weights (an f32 copy, or F16/BF16/F32 safetensors used in place) train as they are.
        lm.model
    } else if a.quantized_base {
        eprintln!("note: training over the quantized base as served (QLoRA-style; no f32 copy)");
        lm.model
    } else {
        eprintln!("note: the base is quantized; training on its f32 dequantization (the adapter serves on the quantized file; --quantized-base keeps it quantized)");
        let g = baimo_formats::gguf::GgufFile::open(&path)?;
        Transformer::from_gguf_dequantized(&g)?
    };
    if !device.is_cpu() {
        if a.quantized_base {
            eprintln!(
                "note: --quantized-base is for the CPU; the base is dequantized to f32 on {}",
                a.device
            );
        }
        model = model.to_device(&device)?;
    }
    if lm.template.is_fallback() {
        eprintln!(
            "note: the model has no chat template; training with the built-in ChatML template"
        );
    }
    let data_opts = DataOptions {
        format: a.format,
        fail_on_bad: a.on_bad_record == "fail",
        all_tokens: a.all_tokens,
        max_seq_len: a.max_seq_len,
        overlong: if a.overlong == "skip" {
            Overlong::Skip
        } else {
            Overlong::Truncate
        },
    };
    let report = |what: &str, p: &baimo_train::run::Prepared| {
        for b in &p.bad {
            eprintln!("{what}: line {}: skipped: {}", b.line, b.reason);
        }
        if !p.truncated.is_empty() {
            eprintln!(
                "{what}: {} sequences over --max-seq-len {} truncated (lines {:?})",
                p.truncated.len(),
                a.max_seq_len,
                p.truncated
            );
        }
        if !p.skipped_long.is_empty() {
            eprintln!(
                "{what}: {} sequences over --max-seq-len {} skipped (lines {:?})",
                p.skipped_long.len(),
                a.max_seq_len,
                p.skipped_long
            );
        }
    };
    let prepared = prepare(&a.data, &data_opts, &lm.template, &lm.tokenizer)?;
    report(&a.data.display().to_string(), &prepared);
    let mut train = prepared.examples;
    let eval = match &a.eval_file {
        Some(f) => {
            let p = prepare(f, &data_opts, &lm.template, &lm.tokenizer)?;
            report(&f.display().to_string(), &p);
            p.examples
        }
        None if a.eval_fraction > 0.0 => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0xe7a1);
            train.shuffle(&mut rng);
            let n =
                ((train.len() as f64 * a.eval_fraction).round() as usize).clamp(1, train.len() - 1);
            train.split_off(train.len() - n)
        }
        None => Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)"
            );
        });
    }
    let opts = RunOptions {
        lora: LoraSpec {
            rank: a.rank,
            alpha: a.alpha,
            dropout: a.dropout,
            target_modules: a.target_modules.clone(),
            use_rslora: a.rslora,
        },
        epochs: a.epochs,
        max_steps: a.max_steps,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        lr: a.lr,
        warmup_steps: a.warmup_steps,
        weight_decay: a.weight_decay,
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        seed: a.seed,
        eval_every: a.eval_every,
        save_every: a.save_every,
        out: a.out.clone(),
        base_name: path.display().to_string(),
        resume: a.resume.clone(),
        pack_tokens: a.pack_tokens,
    };
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{bar:30}] {msg} · {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut smoothed: Option<f64> = None;
    let mut step_log = match &a.step_log {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening --step-log {}", p.display()))?,
        )),
        None => None,
    };
    let mut log_error: Option<std::io::Error> = None;
    run_finetune(&mut model, &train, &eval, &opts, &stop, |p| match p {
        Progress::Start {
            total_steps,
            train,
            eval,
            params,
        } => {
            bar.set_length(total_steps as u64);
            say(&bar, format!(
                "training {params} LoRA parameters on {train} sequences ({eval} held out) for {total_steps} steps"
            ));
        }
        Progress::Step {
            step,
            stats,
            tokens_per_s,
            seconds,
        } => {
            if let Some(w) = step_log.as_mut() {
                use std::io::Write;
                let line = serde_json::json!({
                    "step": step, "seconds": seconds, "loss": stats.loss, "lr": stats.lr,
                    "grad_norm": stats.grad_norm, "tokens": stats.tokens,
                    "sequence_tokens": stats.sequence_tokens,
                });
                if let Err(e) = writeln!(w, "{line}").and_then(|_| w.flush()) {
                    log_error.get_or_insert(e);
                }
            }
            let s = smoothed.map_or(stats.loss, |l| 0.9 * l + 0.1 * stats.loss);
            smoothed = Some(s);
            bar.set_position(step as u64);
            let msg = format!(
                "loss {:.4} (avg {s:.4}) lr {:.2e} |g| {:.3} {tokens_per_s:.0} tok/s",
                stats.loss, stats.lr, stats.grad_norm
            );
            if bar.is_hidden() && (step % 10 == 0 || step == 1) {
                eprintln!("step {step}: {msg}");
            }
            bar.set_message(msg);
        }
        Progress::Eval { step, loss } => say(&bar, format!("step {step}: eval loss {loss:.4}")),
        Progress::Saved { step, dir } => say(&bar, format!("step {step}: saved {}", dir.display())),
    })?;
    bar.finish();
    if let Some(e) = log_error {
        eprintln!("warning: --step-log could not be written: {e}");
    }
    eprintln!(
        "adapter written to {} (PEFT format; use it with `baimo run MODEL --adapter {}`)",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
