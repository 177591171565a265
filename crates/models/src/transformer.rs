//! The decoder-only transformer (Touvron et al. 2023, "LLaMA"; Qwen2/Qwen3 technical reports), written once.
//! Mirrors HF `modeling_llama.py`: pre-norm attention with rotary embeddings and grouped-query attention,
//! then a SwiGLU MLP, each with a residual connection.

use std::path::Path;

use baimo_formats::gguf::GgufFile;
use baimo_formats::llama2c::Llama2cCheckpoint;
use baimo_formats::safetensors::SafeTensorsFiles;
use candle_core::{Device, Tensor};

use crate::layers::{
    softmax_last_dim, softmax_last_dim_candle, Embedding, Linear, RmsNorm, Rope, SwiGluOp,
};
use crate::lora::{
    permute_rows_for_interleaved_rope, slot, LoraAdapter, LoraDelta, ServedAdapter, PROJECTIONS,
};
use crate::paged::{PagedKvCache, SeqSlice};
use crate::train_attention::TrainAttention;
use crate::weights::{ModelFormat, WeightSource};
use crate::{Arch, KvCache, ModelConfig, ModelError, Result, RopeAngles, RopeScaling, RopeStyle};

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(src: &dyn WeightSource, p: &str, cfg: &ModelConfig) -> Result<Attention> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let b = cfg.attention_bias;
        let norm = |n: &str| -> Result<Option<RmsNorm>> {
            if cfg.qk_norm {
                Ok(Some(RmsNorm::load(
                    src,
                    &format!("{p}.{n}.weight"),
                    hd,
                    cfg.rms_norm_eps,
                )?))
            } else {
                Ok(None)
            }
        };
        Ok(Attention {
            q_proj: Linear::load(src, &format!("{p}.q_proj"), nq * hd, h, b)?,
            k_proj: Linear::load(src, &format!("{p}.k_proj"), nkv * hd, h, b)?,
            v_proj: Linear::load(src, &format!("{p}.v_proj"), nkv * hd, h, b)?,
            o_proj: Linear::load(src, &format!("{p}.o_proj"), h, nq * hd, false)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            n_heads: nq,
            n_kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// `x`: (tokens, hidden) at the positions `cs` was built for; returns (tokens, hidden). Keys and values go
    /// to `kv`, whichever kind of cache it is; the attention arithmetic is the paper's either way.
    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        rope: &Rope,
        cs: &(Tensor, Tensor),
        kv: &mut Kv,
    ) -> Result<Tensor> {
        let seq = x.dim(0)?;
        let pass = kv.pass();
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((seq, n, self.head_dim))?
                .transpose(0, 1)?
                .contiguous()?)
        };
        let [q, k, v] = project_many(
            [&self.q_proj, &self.k_proj, &self.v_proj],
            x,
            layer,
            [slot::Q, slot::K, slot::V],
            pass,
        )?;
        if let (Kv::Train(lens, TrainOps::Kernels), None) = (&kv, &self.q_norm) {
            // Training: rope and attention of every packed sequence as one autograd node.
            let op = TrainAttention {
                lens: lens.to_vec(),
                cos: cs.0.flatten_all()?.to_vec1::<f32>()?,
                sin: cs.1.flatten_all()?.to_vec1::<f32>()?,
                style: rope.style(),
                n_heads: self.n_heads,
                n_kv_heads: self.n_kv_heads,
                head_dim: self.head_dim,
            };
            let out = q
                .contiguous()?
                .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?;
            return project(&self.o_proj, &out, layer, slot::O, pass);
        }
        let mut q = heads(q, self.n_heads)?;
        let mut k = heads(k, self.n_kv_heads)?;
        let v = heads(v, self.n_kv_heads)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            if let Kv::Train(_, TrainOps::Candle) = kv {
                q = qn.forward_candle(&q)?;
                k = kn.forward_candle(&k)?;
            } else {
                q = qn.forward(&q)?;
                k = kn.forward(&k)?;
            }
        }
        let q = rope.apply(&q, &cs.0, &cs.1)?;
        let k = rope.apply(&k, &cs.0, &cs.1)?;
        let out = match kv {
            Kv::Contiguous(cache) => {
                let start = cache.len();
                let (k_all, v_all) = cache.append(layer, &k, &v)?;
                self.attend_dense(q, k_all, v_all, start, TrainOps::Kernels)?
            }
            // Training: whole sequences at once, no cache, every op differentiable. Packed sequences attend
            // each within itself.
            Kv::Train(lens, ops) if lens.len() <= 1 => self.attend_dense(q, k, v, 0, *ops)?,
            Kv::Train(lens, ops) => {
                let mut outs = Vec::with_capacity(lens.len());
                let mut at = 0;
                for &n in lens.iter() {
                    let part = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(1, at, n)?) };
                    outs.push(self.attend_dense(part(&q)?, part(&k)?, part(&v)?, 0, *ops)?);
                    at += n;
                }
                Tensor::cat(&outs, 0)?
            }
            Kv::Paged(pool, seqs) => {
                let flat =
                    |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
                let out = pool.attend(
                    layer,
                    seqs,
                    &flat(&q)?,
                    &flat(&k)?,
                    &flat(&v)?,
                    self.n_heads,
                );
                Tensor::from_vec(out, (seq, self.n_heads * self.head_dim), &Device::Cpu)?
            }
        };
        project(&self.o_proj, &out, layer, slot::O, pass)
    }

    /// Causal softmax attention of `q` (heads, seq, hd) at positions `start..` over `k_all`, `v_all`
    /// (kv_heads, start + seq, hd); returns (seq, heads·hd).
    ///
    /// Long prompts run in chunks of [`ATTENTION_CHUNK`] query rows, each over the keys it can see: the score
    /// matrices (heads × rows × keys, three of them alive at once) otherwise dominate a 512-token prefill's
    /// memory (~44 MiB for the 0.5B models), and the keys past a chunk's last row are never computed.
    /// `ops`: the softmax as our CPU node or as candle's operations ([`TrainOps`]; off the CPU, candle's).
    fn attend_dense(
        &self,
        q: Tensor,
        k_all: Tensor,
        v_all: Tensor,
        start: usize,
        ops: TrainOps,
    ) -> Result<Tensor> {
        let seq = q.dim(1)?;
        if seq <= ATTENTION_CHUNK {
            return self.attend_chunk(q, &k_all, &v_all, start, ops);
        }
        let mut outs = Vec::with_capacity(seq.div_ceil(ATTENTION_CHUNK));
        let mut at = 0;
        while at < seq {
            let n = ATTENTION_CHUNK.min(seq - at);
            let visible = start + at + n;
            outs.push(self.attend_chunk(
                q.narrow(1, at, n)?.contiguous()?,
                &k_all.narrow(1, 0, visible)?,
                &v_all.narrow(1, 0, visible)?,
                start + at,
                ops,
            )?);
            at += n;
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// [`Self::attend_dense`] for one chunk: `q` (heads, seq, hd) at positions `start..start + seq` over
    /// `k_all`, `v_all` (kv_heads, start + seq, hd).
    fn attend_chunk(
        &self,
        q: Tensor,
        k_all: &Tensor,
        v_all: &Tensor,
        start: usize,
        ops: TrainOps,
    ) -> Result<Tensor> {
        let seq = q.dim(1)?;
        let total = start + seq;

        // Grouped-query attention: query head h reads kv head h / group (HF `repeat_kv`).
        let group = self.n_heads / self.n_kv_heads;
        let q = q.reshape((self.n_kv_heads, group * seq, self.head_dim))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k_all.contiguous()?.t()?)? * scale)?; // (kv, group*seq, total)
        let scores = if seq > 1 {
            let mask = causal_mask(seq, start, total)?.to_device(q.device())?; // (seq, total)
            let scores = scores.reshape((self.n_kv_heads, group, seq, total))?;
            scores
                .broadcast_add(&mask)?
                .reshape((self.n_kv_heads, group * seq, total))?
        } else {
            scores
        };
        let probs = match ops {
            TrainOps::Kernels => softmax_last_dim(&scores)?,
            TrainOps::Candle => softmax_last_dim_candle(&scores)?,
        };
        let out = probs.matmul(&v_all.contiguous()?)?; // (kv, group*seq, hd)
        let out = out
            .reshape((self.n_heads, seq, self.head_dim))?
            .transpose(0, 1)?
            .contiguous()?;
        Ok(out.reshape((seq, self.n_heads * self.head_dim))?)
    }
}

/// Where attention keeps keys and values: one sequence's contiguous cache, or the paged pool shared by a batch.
enum Kv<'a, 'b> {
    /// Training: no cache; the rows are sequences of these lengths packed one after another, run by these ops.
    Train(&'a [usize], TrainOps),
    Contiguous(&'a mut KvCache),
    Paged(&'a mut PagedKvCache, &'a [SeqSlice<'b>]),
}

/// How the projections of a pass run.
#[derive(Clone, Copy)]
enum Pass<'a, 'b> {
    /// One sequence over a contiguous cache: the plain product (with the adapter attached by `set_adapter`).
    Cached,
    /// Training: differentiable in the activations and the attached LoRA, the base weights constant.
    Train(TrainOps),
    /// A served batch: batch-invariant, each sequence's own adapter (if any) added to its rows.
    Batch(&'a [SeqSlice<'b>]),
}

impl<'a, 'b> Kv<'a, 'b> {
    fn pass(&self) -> Pass<'a, 'b> {
        match self {
            Kv::Train(_, ops) => Pass::Train(*ops),
            Kv::Contiguous(_) => Pass::Cached,
            Kv::Paged(_, seqs) => Pass::Batch(seqs),
        }
    }
}

/// Several projections of the same `x` (modules `slots` of `layer`) as `pass` runs them; a single sequence's
/// pass multiplies them in one kernel call ([`Linear::forward_many`]).
fn project_many<const N: usize>(
    ls: [&Linear; N],
    x: &Tensor,
    layer: usize,
    slots: [usize; N],
    pass: Pass,
) -> Result<[Tensor; N]> {
    let ys = match pass {
        Pass::Cached => Linear::forward_many(&ls, x)?,
        Pass::Train(ops) => ls
            .iter()
            .map(|l| train_projection(l, x, ops))
            .collect::<Result<Vec<_>>>()?,
        Pass::Batch(seqs) => {
            let rows: Vec<_> = slots
                .iter()
                .map(|&slot| adapter_rows(seqs, layer, slot))
                .collect();
            Linear::forward_rows_many(&ls, x, &rows)?
        }
    };
    ys.try_into()
        .map_err(|_| ModelError::Kernel("project_many: wrong number of outputs".into()))
}

/// A projection of `x` (module `slot` of `layer`) as `pass` runs it.
fn project(l: &Linear, x: &Tensor, layer: usize, slot: usize, pass: Pass) -> Result<Tensor> {
    match pass {
        Pass::Cached => l.forward(x),
        Pass::Train(ops) => train_projection(l, x, ops),
        Pass::Batch(seqs) => l.forward_rows(x, &adapter_rows(seqs, layer, slot)),
    }
}

/// A training pass's projection: our kernels' node, or candle's product of the dense weight.
fn train_projection(l: &Linear, x: &Tensor, ops: TrainOps) -> Result<Tensor> {
    match ops {
        TrainOps::Kernels => l.forward_train(x),
        TrainOps::Candle => l.forward(x),
    }
}

/// The batch rows (first row, count) of each sequence that has an adapter update for module `slot` of
/// `layer`, with that update.
fn adapter_rows<'a>(
    seqs: &[SeqSlice<'a>],
    layer: usize,
    slot: usize,
) -> Vec<(usize, usize, &'a crate::lora::LoraDelta)> {
    let mut per_rows = Vec::new();
    let mut row = 0;
    for s in seqs {
        let n = s.tokens.len();
        if let Some(d) = s.adapter.and_then(|a| a.delta(layer, slot)) {
            per_rows.push((row, n, d));
        }
        row += n;
    }
    per_rows
}

/// Runs `f` (a forward pass) on a thread of the global rayon pool. A pass makes a dozen parallel calls per
/// layer (activation quantization, every matrix product, attention); made from a thread outside the pool,
/// each one hands its work to the pool and puts the caller to sleep until it is done, and for a decoded
/// token of a small model those hand-offs cost as much as the arithmetic. From inside, the calling worker
/// does its share and the others steal theirs.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Query rows per attention chunk (see [`Attention::attend_dense`]).
const ATTENTION_CHUNK: usize = 128;

/// 0 where query i (absolute position start+i) may attend key j, -inf after it.
fn causal_mask(seq: usize, start: usize, total: usize) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (seq, total), &Device::Cpu)?)
}

/// SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x)).
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(src: &dyn WeightSource, p: &str, cfg: &ModelConfig) -> Result<Mlp> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: Linear::load(src, &format!("{p}.gate_proj"), i, h, false)?,
            up_proj: Linear::load(src, &format!("{p}.up_proj"), i, h, false)?,
            down_proj: Linear::load(src, &format!("{p}.down_proj"), h, i, false)?,
        })
    }
    fn forward(&self, x: &Tensor, layer: usize, pass: Pass) -> Result<Tensor> {
        let [g, u] = project_many(
            [&self.gate_proj, &self.up_proj],
            x,
            layer,
            [slot::GATE, slot::UP],
            pass,
        )?;
        if matches!(pass, Pass::Train(TrainOps::Kernels)) && g.dtype() == candle_core::DType::F32 {
            let h = g
                .contiguous()?
                .apply_op2(&u.contiguous()?, SwiGluOp::default())?;
            return project(&self.down_proj, &h, layer, slot::DOWN, pass);
        }
        // The gate's pre-activation is freed before the product is made: one fewer (tokens × intermediate)
        // buffer alive at a time.
        let g = {
            let s = g.silu()?;
            drop(g);
            s
        };
        project(&self.down_proj, &(g * u)?, layer, slot::DOWN, pass)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(src: &dyn WeightSource, i: usize, cfg: &ModelConfig) -> Result<DecoderLayer> {
        let p = format!("model.layers.{i}");
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(src, &format!("{p}.input_layernorm.weight"), h, eps)?,
            self_attn: Attention::load(src, &format!("{p}.self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(
                src,
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                eps,
            )?,
            mlp: Mlp::load(src, &format!("{p}.mlp"), cfg)?,
        })
    }
}

impl DecoderLayer {
    /// The projections in [`PROJECTIONS`] order.
    fn projections(&self) -> [&Linear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }
    fn projections_mut(&mut self) -> [&mut Linear; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }
}

/// A projection LoRA can adapt; see [`Transformer::lora_targets`].
#[derive(Debug, Clone)]
pub struct LoraTarget {
    /// `model.layers.N.self_attn.q_proj` etc.
    pub path: String,
    /// `q_proj` etc. (PEFT's `target_modules` names).
    pub short: String,
    pub out_features: usize,
    pub in_features: usize,
    /// Heads whose rows llama.cpp's converter permuted (q/k of GGUF Llama), if any.
    pub permuted_heads: Option<usize>,
}

/// Which positions to return logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position: (1, vocab). What generation needs.
    Last,
    /// Every position: (seq, vocab). Perplexity and tests.
    All,
}

/// What a training pass runs ([`Transformer::forward_train_packed`]): our CPU kernels, each projection,
/// attention, norm and SwiGLU one custom autograd node ([`TrainOps::Kernels`], the CPU's default), or candle's
/// own tensor operations on dense weights ([`TrainOps::Candle`]), which run on any device candle supports
/// (CUDA) and, on the CPU, are the textbook reference the kernels' nodes are tested against. Both are this
/// one decoder; only the implementation of each step differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainOps {
    #[default]
    Kernels,
    Candle,
}

pub struct Transformer {
    cfg: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    format: ModelFormat,
    /// Where the weights (and so every activation) live.
    device: Device,
    train_ops: TrainOps,
}

impl Transformer {
    /// Builds the decoder from any weight source whose tensors follow the config.
    pub fn load(cfg: ModelConfig, src: &dyn WeightSource) -> Result<Transformer> {
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = Embedding::load(src, "model.embed_tokens.weight", v, h)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(src, i, &cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(src, "model.norm.weight", h, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.as_linear()?
        } else {
            Linear::load(src, "lm_head", v, h, false)?
        };
        let rope = Rope::from_config(&cfg);
        Ok(Transformer {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            format: src.format(),
            cfg,
            device: Device::Cpu,
            train_ops: TrainOps::Kernels,
        })
    }

    /// The same model with every weight dense f32 on `dev` (dequantized, or converted from F16/BF16, where the
    /// file stores it so; attached LoRA updates moved too), training through candle's operations
    /// ([`TrainOps::Candle`]): the form in which it trains on a GPU. On the CPU it is the reference for the
    /// kernels' training pass.
    pub fn to_device(&self, dev: &Device) -> Result<Transformer> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                let norm = |n: &Option<RmsNorm>| n.as_ref().map(|n| n.to_device(dev)).transpose();
                Ok(DecoderLayer {
                    input_layernorm: l.input_layernorm.to_device(dev)?,
                    self_attn: Attention {
                        q_proj: a.q_proj.to_dense(dev)?,
                        k_proj: a.k_proj.to_dense(dev)?,
                        v_proj: a.v_proj.to_dense(dev)?,
                        o_proj: a.o_proj.to_dense(dev)?,
                        q_norm: norm(&a.q_norm)?,
                        k_norm: norm(&a.k_norm)?,
                        ..*a
                    },
                    post_attention_layernorm: l.post_attention_layernorm.to_device(dev)?,
                    mlp: Mlp {
                        gate_proj: l.mlp.gate_proj.to_dense(dev)?,
                        up_proj: l.mlp.up_proj.to_dense(dev)?,
                        down_proj: l.mlp.down_proj.to_dense(dev)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = self.embed_tokens.to_dense(dev)?;
        // Tied embeddings share the one dense table.
        let lm_head = if self.cfg.tie_word_embeddings {
            embed_tokens.as_linear()?
        } else {
            self.lm_head.to_dense(dev)?
        };
        Ok(Transformer {
            cfg: self.cfg.clone(),
            embed_tokens,
            layers,
            norm: self.norm.to_device(dev)?,
            lm_head,
            rope: self.rope.clone(),
            format: self.format,
            device: dev.clone(),
            train_ops: TrainOps::Candle,
        })
    }

    /// Where the weights live (LoRA parameters for training go there too).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What [`Transformer::forward_train_packed`] runs.
    pub fn train_ops(&self) -> TrainOps {
        self.train_ops
    }

    /// Chooses what the training pass runs. [`TrainOps::Kernels`] needs the weights on the CPU;
    /// [`TrainOps::Candle`] needs dense weights ([`Transformer::to_device`]) to be differentiable.
    pub fn set_train_ops(&mut self, ops: TrainOps) -> Result<()> {
        if ops == TrainOps::Kernels && !self.device.is_cpu() {
            return Err(ModelError::BadConfig(
                "the CPU kernels' training pass needs the weights on the CPU".into(),
            ));
        }
        // Candle's product of a weight our kernels multiply would pass no gradient to its input.
        if ops == TrainOps::Candle && !(self.is_float() && self.lm_head.is_float()) {
            return Err(ModelError::BadConfig(
                "candle's training operations need dense weights (Transformer::to_device)".into(),
            ));
        }
        self.train_ops = ops;
        Ok(())
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Transformer> {
        let mut cfg = ModelConfig::from_gguf(g)?;
        if let Some(w) = WeightSource::get(g, "rope_freqs.weight")? {
            let factors = w.into_f32()?.flatten_all()?.to_vec1::<f32>()?;
            cfg.rope_scaling = Some(RopeScaling::FreqFactors(factors));
        }
        Transformer::load(cfg, g)
    }

    /// Like [`Transformer::from_gguf`] with every weight dequantized to f32 (a trainable float base).
    pub fn from_gguf_dequantized(g: &GgufFile) -> Result<Transformer> {
        let mut cfg = ModelConfig::from_gguf(g)?;
        if let Some(w) = WeightSource::get(g, "rope_freqs.weight")? {
            let factors = w.into_f32()?.flatten_all()?.to_vec1::<f32>()?;
            cfg.rope_scaling = Some(RopeScaling::FreqFactors(factors));
        }
        Transformer::load(cfg, &crate::weights::Dequantized(g))
    }

    /// True when every linear layer is float, so gradients flow through the whole decoder.
    pub fn is_float(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.projections().iter().all(|x| x.is_float()))
    }

    pub fn from_hf_dir(dir: &Path) -> Result<Transformer> {
        let cfg = ModelConfig::from_hf_config(&dir.join("config.json"))?;
        let files = SafeTensorsFiles::open(dir)?;
        Transformer::load(cfg, &files)
    }

    pub fn from_llama2c(ckpt: &Llama2cCheckpoint) -> Result<Transformer> {
        let c = &ckpt.config;
        let cfg = ModelConfig {
            arch: Arch::Llama,
            hidden_size: c.dim,
            intermediate_size: c.hidden_dim,
            num_hidden_layers: c.n_layers,
            num_attention_heads: c.n_heads,
            num_key_value_heads: c.n_kv_heads,
            head_dim: c.dim / c.n_heads.max(1),
            vocab_size: c.vocab_size,
            // llama2.c run.c uses 1e-5 and theta 10000 with interleaved pairs.
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            rope_style: RopeStyle::Interleaved,
            rope_angles: RopeAngles::PerFrequency,
            max_position_embeddings: c.seq_len,
            tie_word_embeddings: c.shared_classifier,
            attention_bias: false,
            qk_norm: false,
        };
        Transformer::load(cfg, ckpt)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Applies a LoRA adapter to the projections it targets (replacing any adapter set before), or with
    /// `None` restores the base model. The base weights are not touched.
    pub fn set_adapter(&mut self, adapter: Option<&LoraAdapter>) -> Result<()> {
        let prepared = adapter.map(|ad| self.prepare_adapter(ad)).transpose()?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (s, linear) in layer.projections_mut().into_iter().enumerate() {
                let delta = prepared.as_ref().and_then(|p| p.delta(i, s).cloned());
                linear.set_lora(delta, &format!("model.layers.{i}.{}", PROJECTIONS[s]))?;
            }
        }
        Ok(())
    }

    /// Checks an adapter against this model and lays it out for per-sequence use in
    /// [`Transformer::forward_paged`] ([`SeqSlice::adapter`]): every module it holds must be a projection of
    /// this model with matching shapes, and B's rows follow llama.cpp's q/k permutation where the file has it.
    pub fn prepare_adapter(&self, ad: &LoraAdapter) -> Result<ServedAdapter> {
        let interleaved = self.cfg.rope_style == RopeStyle::Interleaved;
        let (nq, nkv) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let mut used = 0;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let mut slots: [Option<LoraDelta>; 7] = Default::default();
            for (s, linear) in layer.projections().into_iter().enumerate() {
                let path = format!("model.layers.{i}.{}", PROJECTIONS[s]);
                let Some(d) = ad.delta(&path) else { continue };
                used += 1;
                let mut d = d.clone();
                let heads = match s {
                    slot::Q => Some(nq),
                    slot::K => Some(nkv),
                    _ => None,
                };
                if let (true, Some(h)) = (interleaved, heads) {
                    d.b = permute_rows_for_interleaved_rope(&d.b, h)?;
                }
                linear.check_lora(&d, &path)?;
                slots[s] = Some(d);
            }
            layers.push(slots);
        }
        let total = ad.modules().count();
        if used != total {
            let known: Vec<String> = (0..self.layers.len())
                .flat_map(|i| PROJECTIONS.map(|p| format!("model.layers.{i}.{p}")))
                .collect();
            let unknown: Vec<&str> = ad
                .modules()
                .filter(|m| !known.iter().any(|k| k == m))
                .take(3)
                .collect();
            return Err(ModelError::BadConfig(format!(
                "{}: {} of the adapter's {total} modules are not projections of this model (e.g. {unknown:?})",
                ad.path.display(),
                total - used
            )));
        }
        Ok(ServedAdapter::new(ad.path.clone(), layers))
    }

    pub fn format(&self) -> ModelFormat {
        self.format
    }

    /// Runs `tokens` at positions `cache.len()..` and appends their keys/values to `cache`.
    /// Returns f32 logits, (1, vocab) or (seq, vocab) per `which`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Tensor> {
        on_pool(|| self.forward_on_pool(tokens, cache, which))
    }

    fn forward_on_pool(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
    ) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(ModelError::BadConfig(
                "forward called with no tokens".into(),
            ));
        }
        self.check_tokens(tokens)?;
        cache.check_room(tokens.len())?;
        let seq = tokens.len();
        let positions: Vec<usize> = (cache.len()..cache.len() + seq).collect();
        let x = self.decode(tokens, &positions, &mut Kv::Contiguous(cache))?;
        cache.advance(seq);
        let x = match which {
            Logits::Last => x.narrow(0, seq - 1, 1)?,
            Logits::All => x,
        };
        self.logits(&x, Pass::Cached)
    }

    /// Logits for every position of one sequence, without a KV cache: the training forward pass. Every op is
    /// differentiable, so gradients reach LoRA parameters given as `candle_core::Var` tensors.
    pub fn forward_train(&self, tokens: &[u32]) -> Result<Tensor> {
        let all: Vec<u32> = (0..tokens.len() as u32).collect();
        self.forward_train_packed(&[tokens], &all)
    }

    /// The training pass over several sequences packed into one (Krell et al. 2021, "Efficient Sequence
    /// Packing"): their tokens run through every projection as one matrix, each at its own positions from 0,
    /// and attention stays within each sequence, so the result is what separate passes give, with larger
    /// matrix products and a fraction of the ops. Logits only at `rows` (indices into the concatenated
    /// tokens, result rows in that order): the output head, a large share of a small model's work, runs only
    /// where the loss needs it.
    pub fn forward_train_packed(&self, seqs: &[&[u32]], rows: &[u32]) -> Result<Tensor> {
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(ModelError::BadConfig(
                "forward called with no tokens".into(),
            ));
        }
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let tokens: Vec<u32> = seqs.concat();
        self.check_tokens(&tokens)?;
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= tokens.len()) {
            return Err(ModelError::BadConfig(format!(
                "logits asked at row {r} of {} packed tokens",
                tokens.len()
            )));
        }
        let positions: Vec<usize> = lens.iter().flat_map(|&n| 0..n).collect();
        let x = self.decode(&tokens, &positions, &mut Kv::Train(&lens, self.train_ops))?;
        let every_row =
            rows.len() == tokens.len() && rows.iter().enumerate().all(|(i, &r)| r as usize == i);
        let x = if every_row {
            x
        } else {
            x.index_select(&Tensor::new(rows, &self.device)?, 0)?
        };
        self.logits(&x, Pass::Train(self.train_ops))
    }

    /// The projections a LoRA adapter can target: (module path, out, in, heads for q/k row permutation when
    /// this model's rope layout is llama.cpp's interleaved one).
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        let interleaved = self.cfg.rope_style == RopeStyle::Interleaved;
        let (nq, nkv) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (s, l) in layer.projections().into_iter().enumerate() {
                let name = PROJECTIONS[s];
                let heads = match s {
                    slot::Q => Some(nq),
                    slot::K => Some(nkv),
                    _ => None,
                };
                out.push(LoraTarget {
                    path: format!("model.layers.{i}.{name}"),
                    short: name.rsplit('.').next().unwrap_or(name).to_string(),
                    out_features: l.out_features(),
                    in_features: l.in_features(),
                    permuted_heads: heads.filter(|_| interleaved),
                });
            }
        }
        out
    }

    /// Sets the LoRA update of one projection (as the model computes it: B's rows in the model's own layout).
    pub fn set_lora(&mut self, path: &str, delta: Option<crate::lora::LoraDelta>) -> Result<()> {
        let rest = path
            .strip_prefix("model.layers.")
            .ok_or_else(|| ModelError::BadConfig(format!("not a projection: {path}")))?;
        let (i, name) = rest
            .split_once('.')
            .ok_or_else(|| ModelError::BadConfig(format!("not a projection: {path}")))?;
        let layer = i
            .parse::<usize>()
            .ok()
            .and_then(|i| self.layers.get_mut(i))
            .ok_or_else(|| ModelError::BadConfig(format!("no layer in {path}")))?;
        let s = PROJECTIONS
            .iter()
            .position(|p| *p == name)
            .ok_or_else(|| ModelError::BadConfig(format!("not a projection: {path}")))?;
        let linear = layer
            .projections_mut()
            .into_iter()
            .nth(s)
            .expect("7 projections");
        linear.set_lora(delta, path)
    }

    /// One forward pass over several sequences at once (continuous batching): each [`SeqSlice`] contributes its
    /// tokens at its own positions, every linear layer runs once over all of them, attention reads each
    /// sequence's own blocks of `kv`. Returns each slice's logits, (1, vocab) or (len, vocab) per its `logits`.
    ///
    /// A sequence's logits do not depend on the other sequences in the batch, nor on how its tokens are split
    /// across calls: linear layers and norms work row by row, attention query by query.
    pub fn forward_paged(&self, seqs: &[SeqSlice], kv: &mut PagedKvCache) -> Result<Vec<Tensor>> {
        on_pool(|| self.forward_paged_on_pool(seqs, kv))
    }

    fn forward_paged_on_pool(
        &self,
        seqs: &[SeqSlice],
        kv: &mut PagedKvCache,
    ) -> Result<Vec<Tensor>> {
        if seqs.is_empty() || seqs.iter().any(|s| s.tokens.is_empty()) {
            return Err(ModelError::BadConfig(
                "forward_paged needs at least one token per sequence".into(),
            ));
        }
        kv.check(seqs)?;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        for s in seqs {
            self.check_tokens(s.tokens)?;
            tokens.extend_from_slice(s.tokens);
            positions.extend(s.start..s.start + s.tokens.len());
        }
        let x = self.decode(&tokens, &positions, &mut Kv::Paged(kv, seqs))?;
        // Only the rows whose logits are wanted go through the output head.
        let mut rows = Vec::new();
        let mut row = 0u32;
        for s in seqs {
            let n = s.tokens.len() as u32;
            match s.logits {
                Logits::Last => rows.push(row + n - 1),
                Logits::All => rows.extend(row..row + n),
            }
            row += n;
        }
        let idx = Tensor::new(rows.as_slice(), &Device::Cpu)?;
        let logits = self.logits(&x.index_select(&idx, 0)?, Pass::Batch(seqs))?;
        let mut out = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for s in seqs {
            let n = match s.logits {
                Logits::Last => 1,
                Logits::All => s.tokens.len(),
            };
            out.push(logits.narrow(0, at, n)?);
            at += n;
        }
        Ok(out)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(ModelError::BadToken {
                id,
                vocab: self.cfg.vocab_size,
            });
        }
        Ok(())
    }

    /// The decoder stack: embeddings, then each layer's attention and MLP blocks with residuals.
    /// Returns the last hidden states, (tokens, hidden), before the final norm.
    fn decode(&self, tokens: &[u32], positions: &[usize], kv: &mut Kv) -> Result<Tensor> {
        let pass = kv.pass();
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed_tokens.forward(&ids)?;
        let (cos, sin) = self.rope.tables_at(positions)?;
        let cs = (cos.to_device(&self.device)?, sin.to_device(&self.device)?);
        let norm = |n: &RmsNorm, x: &Tensor| match pass {
            Pass::Train(TrainOps::Candle) => n.forward_candle(x),
            _ => n.forward(x),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = norm(&layer.input_layernorm, &x)?;
            let h = layer.self_attn.forward(&h, i, &self.rope, &cs, kv)?;
            x = (x + h)?;
            let h = norm(&layer.post_attention_layernorm, &x)?;
            x = (&x + layer.mlp.forward(&h, i, pass)?)?;
        }
        Ok(x)
    }

    /// Final norm and output head: (rows, hidden) → (rows, vocab).
    fn logits(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let x = match pass {
            Pass::Train(TrainOps::Candle) => self.norm.forward_candle(x)?,
            _ => self.norm.forward(x)?,
        }
        .contiguous()?;
        let logits = match pass {
            Pass::Cached => self.lm_head.forward(&x)?,
            Pass::Train(ops) => train_projection(&self.lm_head, &x, ops)?,
            Pass::Batch(_) => self.lm_head.forward_invariant(&x)?,
        };
        Ok(logits.reshape(((), self.cfg.vocab_size))?)
    }
}
