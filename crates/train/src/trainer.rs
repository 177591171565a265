//! Loss, gradients and the optimizer step.
//!
//! The loss is Hugging Face's causal-LM loss: position i predicts token i+1, positions labelled -100 are
//! ignored, and the mean is over every trained token of the optimizer step (so gradient accumulation and
//! batching do not change what a token weighs).

use baimo_models::layers::F32View;
use baimo_models::{TrainOps, Transformer};
use candle_core::backprop::GradStore;
use candle_core::Var;
use candle_core::{Device, Tensor};

use crate::data::Example;
use crate::params::LoraParams;
use crate::{Result, TrainError};

/// Summed negative log-likelihood of the trained tokens of `pack` (examples run as one packed pass, see
/// [`Transformer::forward_train_packed`]), and their count.
pub fn packed_loss(model: &Transformer, pack: &[&Example]) -> Result<(Tensor, usize)> {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut offset = 0u32;
    for ex in pack {
        if ex.tokens.len() != ex.labels.len() {
            return Err(TrainError::Config(
                "tokens and labels differ in length".into(),
            ));
        }
        for (i, &l) in ex.labels.iter().enumerate().skip(1) {
            if l >= 0 {
                rows.push(offset + i as u32 - 1);
                targets.push(l as u32);
            }
        }
        offset += ex.tokens.len() as u32;
    }
    let n = rows.len();
    if n == 0 {
        return Ok((
            Tensor::zeros((), candle_core::DType::F32, model.device())?,
            0,
        ));
    }
    let seqs: Vec<&[u32]> = pack.iter().map(|e| e.tokens.as_slice()).collect();
    let sel = model.forward_train_packed(&seqs, &rows)?;
    let loss = match model.train_ops() {
        TrainOps::Kernels => crate::loss::cross_entropy_sum(&sel, &targets)?,
        TrainOps::Candle => crate::loss::cross_entropy_sum_candle(&sel, &targets)?,
    };
    Ok((loss, n))
}

/// Groups `examples` in order into packs of at most `pack_tokens` tokens (a longer example alone; 0 packs
/// nothing: one example per pass). Each pack is one forward and backward pass, so memory holds one pack's graph.
pub fn packs<'e>(examples: &[&'e Example], pack_tokens: usize) -> Vec<Vec<&'e Example>> {
    let mut out: Vec<Vec<&Example>> = Vec::new();
    let mut tokens = 0;
    for &ex in examples {
        if ex.trained_tokens() == 0 {
            continue;
        }
        let n = ex.tokens.len();
        match out.last_mut() {
            Some(p) if pack_tokens > 0 && tokens + n <= pack_tokens => {
                p.push(ex);
                tokens += n;
            }
            _ => {
                out.push(vec![ex]);
                tokens = n;
            }
        }
    }
    out
}

/// Mean loss over the trained tokens of `examples`, without gradients (evaluation), and the token count.
pub fn batch_loss(
    model: &Transformer,
    examples: &[&Example],
    pack_tokens: usize,
) -> Result<(f64, usize)> {
    let mut sum = 0f64;
    let mut total = 0;
    for pack in packs(examples, pack_tokens) {
        let (s, n) = packed_loss(model, &pack)?;
        sum += s.to_scalar::<f32>()? as f64;
        total += n;
    }
    Ok((if total == 0 { 0.0 } else { sum / total as f64 }, total))
}

/// Mean loss over the trained tokens of `examples` and the gradients of every LoRA parameter, accumulated over
/// packs of at most `pack_tokens` tokens ([`packs`]).
pub fn batch_loss_and_grads(
    model: &Transformer,
    params: &LoraParams,
    examples: &[&Example],
    pack_tokens: usize,
) -> Result<(f64, GradStore, usize)> {
    let total: usize = examples.iter().map(|e| e.trained_tokens()).sum();
    let mut grads = GradStore::default();
    if total == 0 {
        return Ok((0.0, grads, 0));
    }
    let vars = params.vars();
    let mut loss_sum = 0f64;
    for pack in packs(examples, pack_tokens) {
        let (sum, n) = packed_loss(model, &pack)?;
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
    /// Most tokens run as one packed pass ([`packs`]); 0: one sequence per pass.
    pub pack_tokens: usize,
}

/// Default of [`TrainerConfig::pack_tokens`].
pub const PACK_TOKENS: usize = 2048;

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
            pack_tokens: PACK_TOKENS,
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

/// AdamW's state: step count and both moments of every parameter (in [`LoraParams::vars`] order). The moments
/// live on the CPU whatever the parameters' device: the update runs there (a LoRA adapter is a few million
/// values; for parameters on a GPU it costs one copy of each gradient and parameter each way per step), so
/// it is the same code, the same bits and the same checkpoint on every device.
struct AdamW {
    step_t: usize,
    moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    fn new(vars: &[Var]) -> Result<AdamW> {
        let moments = vars
            .iter()
            .map(|v| {
                let z = || Tensor::zeros(v.shape(), candle_core::DType::F32, &Device::Cpu);
                Ok((z()?, z()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { step_t: 0, moments })
    }

    /// One step, PyTorch's AdamW (decoupled weight decay, bias-corrected moments), with candle_nn's operations
    /// in candle_nn's order and rounding (f32, the constants rounded to f32), fused into one parallel pass
    /// per parameter; each gradient is first multiplied by `clip` when given (gradient-norm clipping).
    fn step(
        &mut self,
        vars: &[Var],
        grads: &GradStore,
        lr: f64,
        clip: Option<f64>,
        cfg: &TrainerConfig,
    ) -> Result<()> {
        use rayon::prelude::*;
        self.step_t += 1;
        let (beta1, beta2) = (cfg.beta1, cfg.beta2);
        let scale_m = (1f64 / (1f64 - beta1.powi(self.step_t as i32))) as f32;
        let scale_v = (1f64 / (1f64 - beta2.powi(self.step_t as i32))) as f32;
        let (b1, c1) = (beta1 as f32, (1.0 - beta1) as f32);
        let (b2, c2) = (beta2 as f32, (1.0 - beta2) as f32);
        let decay = (1f64 - lr * cfg.weight_decay) as f32;
        let (lr32, eps) = (lr as f32, cfg.eps as f32);
        let clip = clip.map(|c| c as f32);
        for (theta, (m, v)) in vars.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(theta) else { continue };
            let n = theta.elem_count();
            let (mut nt, mut nm, mut nv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            {
                let (t, g, m, v) = (
                    theta.as_tensor().to_device(&Device::Cpu)?.contiguous()?,
                    g.to_device(&Device::Cpu)?.contiguous()?,
                    m.contiguous()?,
                    v.contiguous()?,
                );
                let (tv, gv, mv, vv) = (
                    F32View::of(&t, "adamw")?,
                    F32View::of(&g, "adamw")?,
                    F32View::of(&m, "adamw")?,
                    F32View::of(&v, "adamw")?,
                );
                let (tv, gv, mv, vv) = (tv.values(), gv.values(), mv.values(), vv.values());
                if gv.len() != n || mv.len() != n || vv.len() != n {
                    return Err(TrainError::Config(
                        "AdamW: a gradient or moment of the wrong size".into(),
                    ));
                }
                const CHUNK: usize = 4096;
                nt.par_chunks_mut(CHUNK)
                    .zip(nm.par_chunks_mut(CHUNK))
                    .zip(nv.par_chunks_mut(CHUNK))
                    .enumerate()
                    .for_each(|(c, ((nt, nm), nv))| {
                        let o = c * CHUNK;
                        for i in 0..nt.len() {
                            let g = match clip {
                                Some(k) => gv[o + i] * k,
                                None => gv[o + i],
                            };
                            let m = mv[o + i] * b1 + g * c1;
                            let v = vv[o + i] * b2 + (g * g) * c2;
                            let adjusted = (m * scale_m) / ((v * scale_v).sqrt() + eps);
                            nt[i] = tv[o + i] * decay - adjusted * lr32;
                            nm[i] = m;
                            nv[i] = v;
                        }
                    });
            }
            let shape = theta.as_tensor().shape().clone();
            let dev = theta.as_tensor().device().clone();
            theta.set(&Tensor::from_vec(nt, shape.clone(), &Device::Cpu)?.to_device(&dev)?)?;
            *m = Tensor::from_vec(nm, shape.clone(), &Device::Cpu)?;
            *v = Tensor::from_vec(nv, shape, &Device::Cpu)?;
        }
        Ok(())
    }
}

/// What a checkpoint holds besides the adapter, so that a resumed run continues exactly as the uninterrupted
/// one would have: steps taken, AdamW's step count and moments, the dropout seed counter.
pub struct TrainerState {
    pub step: usize,
    pub optimizer_step: usize,
    pub dropout_seed: u64,
    /// (first, second) moment of each parameter, [`LoraParams::vars`] order.
    pub moments: Vec<(Tensor, Tensor)>,
}

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

impl TrainerState {
    /// Writes `trainer_state.json` and `optimizer.safetensors` into `dir`.
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        let io = |e: std::io::Error| TrainError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        let json = serde_json::json!({
            "step": self.step,
            "optimizer_step": self.optimizer_step,
            "dropout_seed": self.dropout_seed,
        });
        std::fs::write(dir.join(STATE_FILE), json.to_string()).map_err(io)?;
        let tensors: std::collections::HashMap<String, Tensor> = self
            .moments
            .iter()
            .enumerate()
            .flat_map(|(i, (m, v))| {
                [
                    (format!("{i}.exp_avg"), m.clone()),
                    (format!("{i}.exp_avg_sq"), v.clone()),
                ]
            })
            .collect();
        candle_core::safetensors::save(&tensors, dir.join(OPTIMIZER_FILE))?;
        Ok(())
    }

    /// Reads the state saved in `dir`; `None` when `dir` holds only an adapter (e.g. one trained elsewhere).
    pub fn load(dir: &std::path::Path, n_vars: usize) -> Result<Option<TrainerState>> {
        let path = dir.join(STATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bad = |message: String| TrainError::Io {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| bad(format!("missing `{k}`")))
        };
        let opt_path = dir.join(OPTIMIZER_FILE);
        let mut t = candle_core::safetensors::load(&opt_path, &Device::Cpu)?;
        let moments = (0..n_vars)
            .map(|i| {
                let mut take = |k: String| {
                    t.remove(&k).ok_or_else(|| TrainError::Io {
                        path: opt_path.display().to_string(),
                        message: format!("missing `{k}` (a checkpoint of another adapter shape?)"),
                    })
                };
                Ok((
                    take(format!("{i}.exp_avg"))?,
                    take(format!("{i}.exp_avg_sq"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(TrainerState {
            step: field("step")? as usize,
            optimizer_step: field("optimizer_step")? as usize,
            dropout_seed: field("dropout_seed")?,
            moments,
        }))
    }
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
        let opt = AdamW::new(&params.vars())?;
        Ok(Trainer {
            params,
            cfg,
            opt,
            step: 0,
        })
    }

    /// The state a checkpoint saves (with the adapter).
    pub fn state(&self) -> TrainerState {
        TrainerState {
            step: self.step,
            optimizer_step: self.opt.step_t,
            dropout_seed: baimo_models::layers::dropout_seed(),
            moments: self.opt.moments.clone(),
        }
    }

    /// Continues from a checkpoint's state (the parameters come from its adapter).
    pub fn restore(&mut self, st: TrainerState) -> Result<()> {
        let vars = self.params.vars();
        if st.moments.len() != vars.len() {
            return Err(TrainError::Config(format!(
                "the checkpoint has optimizer moments for {} parameters, the adapter {}",
                st.moments.len(),
                vars.len()
            )));
        }
        for (v, (m, _)) in vars.iter().zip(&st.moments) {
            if v.as_tensor().dims() != m.dims() {
                return Err(TrainError::Config(format!(
                    "optimizer moment of shape {:?} for a parameter of shape {:?}",
                    m.dims(),
                    v.as_tensor().dims()
                )));
            }
        }
        self.step = st.step;
        self.opt.step_t = st.optimizer_step;
        self.opt.moments = st.moments;
        baimo_models::layers::set_dropout_seed(st.dropout_seed);
        Ok(())
    }

    pub fn step_index(&self) -> usize {
        self.step
    }

    /// One optimizer step over `examples` (all the sequences of the step: batch × accumulation).
    ///
    /// The step runs on a thread of the rayon pool: it makes a few thousand parallel calls (every product,
    /// norm and attention of the forward and backward passes, each parameter's update), and made from a
    /// thread outside the pool each one would hand its work over and put the caller to sleep until done.
    pub fn step(&mut self, model: &Transformer, examples: &[&Example]) -> Result<StepStats> {
        rayon::scope(|_| self.step_on_pool(model, examples))
    }

    fn step_on_pool(&mut self, model: &Transformer, examples: &[&Example]) -> Result<StepStats> {
        let (loss, grads, tokens) =
            batch_loss_and_grads(model, &self.params, examples, self.cfg.pack_tokens)?;
        let vars = self.params.vars();
        let mut sq = 0f64;
        for v in &vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                use rayon::prelude::*;
                let g = g.to_device(&Device::Cpu)?.contiguous()?;
                let view = F32View::of(&g, "gradient norm")?;
                // Chunk sums collected in order and added in order: the same bits whatever the threads
                // did (a resumed run must retrace the uninterrupted one).
                let chunks: Vec<f64> = view
                    .values()
                    .par_chunks(4096)
                    .map(|c| c.iter().map(|&x| f64::from(x * x)).sum::<f64>())
                    .collect();
                sq += chunks.iter().sum::<f64>();
            }
        }
        let grad_norm = sq.sqrt();
        // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
        let clip = self
            .cfg
            .max_grad_norm
            .map(|max| max / (grad_norm + 1e-6))
            .filter(|&coef| coef < 1.0);
        let lr = cosine_lr(
            self.step,
            self.cfg.warmup_steps,
            self.cfg.total_steps,
            self.cfg.lr,
        );
        if tokens > 0 {
            self.opt.step(&vars, &grads, lr, clip, &self.cfg)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(n: usize, trained: bool) -> Example {
        Example {
            tokens: vec![1; n],
            labels: vec![if trained { 1 } else { -100 }; n],
        }
    }

    #[test]
    fn packs_group_in_order_under_the_budget() {
        let exs = [
            ex(3, true),
            ex(4, true),
            ex(2, false),
            ex(9, true),
            ex(2, true),
            ex(3, true),
            ex(1, true),
        ];
        let refs: Vec<&Example> = exs.iter().collect();
        let lens = |p: Vec<Vec<&Example>>| -> Vec<Vec<usize>> {
            p.iter()
                .map(|g| g.iter().map(|e| e.tokens.len()).collect())
                .collect()
        };
        // Examples without trained tokens are dropped (the 1-token one has no next-token target); 9 exceeds the
        // budget and runs alone.
        assert_eq!(lens(packs(&refs, 8)), vec![vec![3, 4], vec![9], vec![2, 3]]);
        assert_eq!(
            lens(packs(&refs, 0)),
            vec![vec![3], vec![4], vec![9], vec![2], vec![3]]
        );
        assert_eq!(lens(packs(&refs, 100)), vec![vec![3, 4, 9, 2, 3]]);
    }
}
