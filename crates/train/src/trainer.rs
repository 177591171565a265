//! Loss, gradients and the optimizer step.
//!
//! The loss is Hugging Face's causal-LM loss: position i predicts token i+1, positions labelled -100 are
//! ignored, and the mean is over every trained token of the optimizer step (so gradient accumulation and
//! batching do not change what a token weighs).

use baimo_models::Transformer;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::data::Example;
use crate::params::LoraParams;
use crate::{Result, TrainError};

/// Summed negative log-likelihood of one example's trained tokens, and their count.
pub fn sequence_loss(model: &Transformer, ex: &Example) -> Result<(Tensor, usize)> {
    if ex.tokens.len() != ex.labels.len() {
        return Err(TrainError::Config(
            "tokens and labels differ in length".into(),
        ));
    }
    let (idx, targets): (Vec<u32>, Vec<u32>) = ex
        .labels
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, &l)| l >= 0)
        .map(|(i, &l)| ((i - 1) as u32, l as u32))
        .unzip();
    let n = idx.len();
    if n == 0 {
        return Ok((Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?, 0));
    }
    let logits = model.forward_train(&ex.tokens)?;
    let idx = Tensor::new(idx.as_slice(), &Device::Cpu)?;
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu)?;
    let sel = logits.index_select(&idx, 0)?;
    let mean = candle_nn::loss::cross_entropy(&sel, &targets)?;
    Ok(((mean * n as f64)?, n))
}

/// Mean loss over the trained tokens of `examples` and the gradients of every LoRA parameter, accumulated one
/// sequence at a time (memory holds one sequence's graph, whatever the batch).
pub fn batch_loss_and_grads(
    model: &Transformer,
    params: &LoraParams,
    examples: &[&Example],
) -> Result<(f64, GradStore, usize)> {
    let total: usize = examples.iter().map(|e| e.trained_tokens()).sum();
    let mut grads = GradStore::default();
    if total == 0 {
        return Ok((0.0, grads, 0));
    }
    let vars = params.vars();
    let mut loss_sum = 0f64;
    for ex in examples {
        let (sum, n) = sequence_loss(model, ex)?;
        if n == 0 {
            continue;
        }
        loss_sum += sum.to_scalar::<f32>()? as f64;
        let g = (sum / total as f64)?.backward()?;
        for v in &vars {
            if let Some(gv) = g.get(v.as_tensor()) {
                let acc = match grads.remove(v.as_tensor()) {
                    Some(prev) => (prev + gv)?,
                    None => gv.clone(),
                };
                grads.insert(v.as_tensor(), acc);
            }
        }
    }
    Ok((loss_sum / total as f64, grads, total))
}

/// Linear warmup to `peak`, then cosine decay to zero at `total` (HF `get_cosine_schedule_with_warmup`).
pub fn cosine_lr(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[derive(Debug, Clone)]
pub struct TrainerConfig {
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this value (None: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            lr: 2e-4,
            warmup_steps: 0,
            total_steps: 1,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: Some(1.0),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub loss: f64,
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens in the loss.
    pub tokens: usize,
    /// Every position the step ran forward and backward (prompt and answer, no padding).
    pub sequence_tokens: usize,
}

/// AdamW (Loshchilov & Hutter 2019) over the LoRA parameters with the warmup + cosine schedule.
pub struct Trainer {
    pub params: LoraParams,
    pub cfg: TrainerConfig,
    opt: AdamW,
    step: usize,
}

impl Trainer {
    pub fn new(params: LoraParams, cfg: TrainerConfig) -> Result<Trainer> {
        let opt = AdamW::new(
            params.vars(),
            ParamsAdamW {
                lr: cfg.lr,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
            },
        )?;
        Ok(Trainer {
            params,
            cfg,
            opt,
            step: 0,
        })
    }

    pub fn step_index(&self) -> usize {
        self.step
    }

    /// One optimizer step over `examples` (all the sequences of the step: batch × accumulation).
    pub fn step(&mut self, model: &Transformer, examples: &[&Example]) -> Result<StepStats> {
        let (loss, mut grads, tokens) = batch_loss_and_grads(model, &self.params, examples)?;
        let vars = self.params.vars();
        let mut sq = 0f64;
        for v in &vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let grad_norm = sq.sqrt();
        if let Some(max) = self.cfg.max_grad_norm {
            // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
            let coef = max / (grad_norm + 1e-6);
            if coef < 1.0 {
                for v in &vars {
                    if let Some(g) = grads.remove(v.as_tensor()) {
                        grads.insert(v.as_tensor(), (g * coef)?);
                    }
                }
            }
        }
        let lr = cosine_lr(
            self.step,
            self.cfg.warmup_steps,
            self.cfg.total_steps,
            self.cfg.lr,
        );
        self.opt.set_learning_rate(lr);
        if tokens > 0 {
            self.opt.step(&grads)?;
        }
        self.step += 1;
        Ok(StepStats {
            loss,
            lr,
            grad_norm,
            tokens,
            sequence_tokens: examples.iter().map(|e| e.tokens.len()).sum(),
        })
    }
}
