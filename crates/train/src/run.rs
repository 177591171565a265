//! A whole fine-tuning run: data preparation, the epoch/step loop with evaluation and checkpoints, export.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use baimo_models::Transformer;
use baimo_tokenize::{ChatTemplate, Tokenizer};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::{encode_conversation, read_jsonl, BadRecord, DataFormat, Example};
use crate::params::{LoraParams, LoraSpec};
use crate::trainer::{batch_loss, StepStats, Trainer, TrainerConfig, TrainerState};
use crate::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    Truncate,
    Skip,
}

#[derive(Debug, Clone)]
pub struct DataOptions {
    pub format: DataFormat,
    /// Stop at the first bad record instead of skipping it.
    pub fail_on_bad: bool,
    pub all_tokens: bool,
    pub max_seq_len: usize,
    pub overlong: Overlong,
}

/// What preparing a file produced, with everything that was dropped and why.
#[derive(Debug, Default)]
pub struct Prepared {
    pub examples: Vec<Example>,
    pub bad: Vec<BadRecord>,
    pub truncated: Vec<usize>,
    pub skipped_long: Vec<usize>,
}

/// Reads, validates, renders and tokenizes a JSONL file.
pub fn prepare(
    path: &Path,
    opts: &DataOptions,
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
) -> Result<Prepared> {
    let (records, mut bad) = read_jsonl(path, opts.format)?;
    let mut out = Prepared::default();
    for (line, messages) in records {
        match encode_conversation(&messages, template, tokenizer, opts.all_tokens) {
            Ok(mut ex) => {
                if ex.tokens.len() > opts.max_seq_len {
                    match opts.overlong {
                        Overlong::Skip => {
                            out.skipped_long.push(line);
                            continue;
                        }
                        Overlong::Truncate => {
                            ex.tokens.truncate(opts.max_seq_len);
                            ex.labels.truncate(opts.max_seq_len);
                            out.truncated.push(line);
                        }
                    }
                }
                if ex.trained_tokens() == 0 {
                    bad.push(BadRecord {
                        line,
                        reason: "no trained tokens left (the answer was cut off by --max-seq-len?)"
                            .into(),
                    });
                    continue;
                }
                out.examples.push(ex);
            }
            Err(reason) => bad.push(BadRecord { line, reason }),
        }
    }
    bad.sort_by_key(|b| b.line);
    if opts.fail_on_bad {
        if let Some(b) = bad.first() {
            return Err(TrainError::BadRecord {
                path: path.display().to_string(),
                line: b.line,
                message: b.reason.clone(),
            });
        }
    }
    out.bad = bad;
    if out.examples.is_empty() {
        return Err(TrainError::NoData(format!(
            "{}: {} bad records, {} too long",
            path.display(),
            out.bad.len(),
            out.skipped_long.len()
        )));
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub lora: LoraSpec,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    /// Sequences per optimizer step = batch_size × grad_accum.
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    pub eval_every: usize,
    pub save_every: usize,
    pub out: PathBuf,
    pub base_name: String,
    /// Continue from a checkpoint (adapter, optimizer moments, step; exactly where it stopped) or from an
    /// adapter alone (its weights; a new schedule). A run's output folder means its newest checkpoint.
    pub resume: Option<PathBuf>,
    /// Most tokens per packed forward/backward pass (0: one sequence per pass).
    pub pack_tokens: usize,
}

#[derive(Debug, Clone)]
pub enum Progress {
    Start {
        total_steps: usize,
        train: usize,
        eval: usize,
        params: usize,
    },
    Step {
        step: usize,
        stats: StepStats,
        tokens_per_s: f64,
        /// Wall time of the optimizer step (forward, backward, update).
        seconds: f64,
    },
    Eval {
        step: usize,
        loss: f64,
    },
    Saved {
        step: usize,
        dir: PathBuf,
    },
}

/// Mean loss over `examples` (no gradients kept).
pub fn eval_loss(model: &Transformer, examples: &[Example], pack_tokens: usize) -> Result<f64> {
    let refs: Vec<&Example> = examples.iter().collect();
    // On the pool, as a training step runs ([`Trainer::step`]).
    let (loss, n) = rayon::scope(|_| batch_loss(model, &refs, pack_tokens))?;
    Ok(if n == 0 { f64::NAN } else { loss })
}

/// `dir` itself when it holds an adapter, else its newest `checkpoint-N` (so `--resume OUT` picks up after a
/// crash).
pub fn latest_checkpoint(dir: &Path) -> PathBuf {
    if dir.join("adapter_config.json").exists() {
        return dir.to_path_buf();
    }
    let newest = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
                e.path()
                    .join("adapter_config.json")
                    .exists()
                    .then_some((n, e.path()))
            })
            .max_by_key(|(n, _)| *n)
    });
    newest.map_or_else(|| dir.to_path_buf(), |(_, p)| p)
}

/// Writes the adapter and the trainer state to `dir` atomically: into `dir.partial`, then renamed, so a
/// kill at any moment leaves either the previous checkpoints or this complete one.
fn save_checkpoint(trainer: &Trainer, dir: &Path, base_name: &str) -> Result<()> {
    let io = |e: std::io::Error| TrainError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let tmp = dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io)?;
    }
    trainer.params.save_peft(&tmp, base_name)?;
    trainer.state().save(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    std::fs::rename(&tmp, dir).map_err(io)?;
    Ok(())
}

/// Trains a LoRA adapter on `train` and writes it (PEFT format) to `opts.out`; returns the final
/// parameters. `stop` (Ctrl-C) ends the run after the current step with a checkpoint.
pub fn finetune(
    model: &mut Transformer,
    train: &[Example],
    eval: &[Example],
    opts: &RunOptions,
    stop: &AtomicBool,
    mut progress: impl FnMut(Progress),
) -> Result<LoraParams> {
    baimo_models::layers::set_dropout_seed(opts.seed);
    let mut resumed = None;
    let params = match &opts.resume {
        Some(dir) => {
            let dir = latest_checkpoint(dir);
            let ad = baimo_models::LoraAdapter::load(&dir)?;
            let params = LoraParams::from_adapter(model, &ad, opts.lora.dropout)?;
            resumed = TrainerState::load(&dir, params.vars().len())?;
            params
        }
        None => LoraParams::init(model, opts.lora.clone(), opts.seed)?,
    };
    params.attach(model, true)?;
    let per_step = (opts.batch_size.max(1) * opts.grad_accum.max(1)).min(train.len().max(1));
    let steps_per_epoch = train.len().div_ceil(per_step);
    let total = opts
        .max_steps
        .unwrap_or(steps_per_epoch * opts.epochs.max(1))
        .max(1);
    progress(Progress::Start {
        total_steps: total,
        train: train.len(),
        eval: eval.len(),
        params: params.num_parameters(),
    });
    let mut trainer = Trainer::new(
        params,
        TrainerConfig {
            lr: opts.lr,
            warmup_steps: opts.warmup_steps,
            total_steps: total,
            weight_decay: opts.weight_decay,
            max_grad_norm: opts.max_grad_norm,
            pack_tokens: opts.pack_tokens,
            ..TrainerConfig::default()
        },
    )?;
    // A checkpoint with its trainer state continues exactly where it stopped: the steps already taken are
    // replayed through the (seeded) data order without training; an adapter alone starts a new schedule.
    let skip = match resumed {
        Some(st) => {
            let s = st.step;
            trainer.restore(st)?;
            s
        }
        None => 0,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut order: Vec<usize> = Vec::new();
    let mut step = 0;
    'outer: loop {
        if order.is_empty() {
            order = (0..train.len()).collect();
            order.shuffle(&mut rng);
            // Length bucketing inside windows of 16 steps: similar lengths share a step, order stays random.
            for w in order.chunks_mut(per_step * 16) {
                w.sort_by_key(|&i| train[i].tokens.len());
            }
            order.reverse();
        }
        let take = per_step.min(order.len());
        let batch: Vec<&Example> = order
            .split_off(order.len() - take)
            .iter()
            .map(|&i| &train[i])
            .collect();
        if step < skip {
            step += 1;
            if step >= total {
                break 'outer;
            }
            continue;
        }
        let t0 = Instant::now();
        let stats = trainer.step(model, &batch)?;
        step += 1;
        let seconds = t0.elapsed().as_secs_f64();
        let tps = stats.tokens as f64 / seconds.max(1e-9);
        progress(Progress::Step {
            step,
            stats,
            tokens_per_s: tps,
            seconds,
        });
        if opts.eval_every > 0 && step % opts.eval_every == 0 && !eval.is_empty() {
            trainer.params.attach(model, false)?;
            let l = eval_loss(model, eval, opts.pack_tokens)?;
            trainer.params.attach(model, true)?;
            progress(Progress::Eval { step, loss: l });
        }
        let interrupted = stop.load(Ordering::SeqCst);
        if (opts.save_every > 0 && step % opts.save_every == 0) || (interrupted && step < total) {
            let dir = opts.out.join(format!("checkpoint-{step}"));
            save_checkpoint(&trainer, &dir, &opts.base_name)?;
            progress(Progress::Saved { step, dir });
        }
        if step >= total || interrupted {
            break 'outer;
        }
    }
    trainer.params.attach(model, false)?;
    if !eval.is_empty() {
        let l = eval_loss(model, eval, opts.pack_tokens)?;
        progress(Progress::Eval { step, loss: l });
    }
    trainer.params.save_peft(&opts.out, &opts.base_name)?;
    progress(Progress::Saved {
        step,
        dir: opts.out.clone(),
    });
    Ok(trainer.params)
}
