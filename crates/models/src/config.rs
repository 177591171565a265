//! Architecture descriptions. Field names follow Hugging Face `config.json`; the GGUF keys are
//! llama.cpp's (`{arch}.embedding_length`, …, see llama.cpp `llama-arch.cpp`).

use std::path::Path;

use baimo_formats::gguf::GgufFile;
use serde_json::Value as Json;

use crate::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2, Llama 3.x, SmolLM2, TinyLlama, stories (llama2.c).
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k, v.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k, explicit head_dim.
    Qwen3,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Arch> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            other => Err(ModelError::UnsupportedArch(other.to_string())),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

/// How rotary embedding pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): the original RoPE paper, llama2.c and GGUF `llama` files (llama.cpp's converter
    /// permutes q/k rows so that this mode reproduces HF; ggml `rope_type` NORM).
    Interleaved,
    /// Pairs (i, i + d/2): HF `rotate_half`, ggml `rope_type` NEOX (qwen2, qwen3, HF llama checkpoints).
    Half,
}

/// How rotary angles are rounded: the two references differ in the last bits, and those bits reach the
/// int8 roundings of the activation quantization downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeAngles {
    /// `position · inv_freq[i]` in f32, each inverse frequency from its own power of the base (HF
    /// transformers, llama2.c).
    PerFrequency,
    /// ggml's (llama.cpp, so GGUF files): `theta_scale = base^(-2/d)` in f32, and pair i's angle is the
    /// position multiplied by it i times in f32, then divided by the file's frequency factor and multiplied
    /// by the linear scale.
    Progressive,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1 frequency-dependent scaling (HF `_compute_llama3_parameters`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors stored in the file (GGUF `rope_freqs.weight`, what llama.cpp's converter writes for
    /// Llama 3.1+ instead of the parameters).
    FreqFactors(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub rope_style: RopeStyle,
    pub rope_angles: RopeAngles,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2).
    pub attention_bias: bool,
    /// Per-head RMSNorm of q and k before rope (Qwen3).
    pub qk_norm: bool,
}

impl ModelConfig {
    /// Reads the hyper-parameters llama.cpp stores under `{arch}.*`.
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
        let arch_name = g
            .architecture()
            .ok_or_else(|| ModelError::BadConfig("general.architecture".into()))?;
        let arch = Arch::parse(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req_u = |k: &str| -> Result<usize> {
            g.get_u64(&key(k))
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::BadConfig(key(k)))
        };
        let hidden = req_u("embedding_length")?;
        let heads = req_u("attention.head_count")?;
        let kv_heads = g
            .get_u64(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(heads);
        let head_dim = g
            .get_u64(&key("attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        let vocab = match g.get_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .or_else(|| {
                    g.tensor("token_embd.weight")
                        .and_then(|t| t.dims.get(1).map(|&d| d as usize))
                })
                .ok_or_else(|| ModelError::BadConfig(key("vocab_size")))?,
        };
        let rope_scaling = match g.get_str(&key("rope.scaling.type")) {
            None | Some("none") => None,
            Some("linear") => {
                let factor = g.get_f32(&key("rope.scaling.factor")).unwrap_or(1.0);
                (factor != 1.0).then_some(RopeScaling::Linear { factor })
            }
            Some(other) => return Err(ModelError::UnsupportedRopeScaling(other.to_string())),
        };
        let cfg = ModelConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: req_u("feed_forward_length")?,
            num_hidden_layers: req_u("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: vocab,
            rms_norm_eps: g
                .get_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f64,
            rope_theta: g.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling,
            rope_style: if arch == Arch::Llama {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Half
            },
            rope_angles: RopeAngles::Progressive,
            max_position_embeddings: g
                .get_u64(&key("context_length"))
                .map(|v| v as usize)
                .unwrap_or(2048),
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            attention_bias: g.tensor("blk.0.attn_q.bias").is_some(),
            qk_norm: g.tensor("blk.0.attn_q_norm.weight").is_some(),
        };
        cfg.validate()
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_config(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let j: Json = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let model_type = j
            .get("model_type")
            .and_then(Json::as_str)
            .unwrap_or("llama");
        let arch = Arch::parse(model_type)?;
        let u = |k: &str| j.get(k).and_then(Json::as_u64).map(|v| v as usize);
        let req = |k: &str| u(k).ok_or_else(|| ModelError::BadConfig(k.to_string()));
        let hidden = req("hidden_size")?;
        let heads = req("num_attention_heads")?;
        let rope_scaling = match j.get("rope_scaling") {
            None | Some(Json::Null) => None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Json::as_str)
                    .unwrap_or("");
                let f = |k: &str| s.get(k).and_then(Json::as_f64).map(|v| v as f32);
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear {
                        factor: f("factor").unwrap_or(1.0),
                    }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: f("factor")
                            .ok_or_else(|| ModelError::BadConfig("rope_scaling.factor".into()))?,
                        low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
                        original_max_position_embeddings: s
                            .get("original_max_position_embeddings")
                            .and_then(Json::as_u64)
                            .unwrap_or(8192)
                            as usize,
                    }),
                    other => return Err(ModelError::UnsupportedRopeScaling(other.to_string())),
                }
            }
        };
        let cfg = ModelConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: req("intermediate_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: u("num_key_value_heads").unwrap_or(heads),
            head_dim: u("head_dim").unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
            vocab_size: req("vocab_size")?,
            rms_norm_eps: j.get("rms_norm_eps").and_then(Json::as_f64).unwrap_or(1e-6),
            rope_theta: j
                .get("rope_theta")
                .and_then(Json::as_f64)
                .unwrap_or(10_000.0) as f32,
            rope_scaling,
            rope_style: RopeStyle::Half,
            rope_angles: RopeAngles::PerFrequency,
            max_position_embeddings: u("max_position_embeddings").unwrap_or(2048),
            tie_word_embeddings: j
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            attention_bias: match arch {
                Arch::Qwen2 => true,
                _ => j
                    .get("attention_bias")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
            },
            qk_norm: arch == Arch::Qwen3,
        };
        cfg.validate()
    }

    fn validate(self) -> Result<Self> {
        let bad = |what: &str| Err(ModelError::BadConfig(what.to_string()));
        if self.hidden_size == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return bad("hidden_size, num_hidden_layers and vocab_size must be positive");
        }
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad("num_attention_heads must be a positive multiple of num_key_value_heads");
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad("head_dim must be positive and even");
        }
        Ok(self)
    }

    /// Parameters in the weights this config describes (embeddings counted once when tied).
    pub fn parameter_count(&self) -> u64 {
        let (h, i, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.attention_bias {
            attn += q + 2 * kv;
        }
        if self.qk_norm {
            attn += 2 * self.head_dim as u64;
        }
        let layer = attn + 3 * h * i + 2 * h;
        let emb = v * h * if self.tie_word_embeddings { 1 } else { 2 };
        layer * self.num_hidden_layers as u64 + emb + h
    }

    /// Inverse frequencies for each rotary pair, after scaling.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / d as f64))
            .collect();
        let scaled: Vec<f64> = match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => {
                base.iter().map(|f| f / *factor as f64).collect()
            }
            Some(RopeScaling::FreqFactors(ff)) => base
                .iter()
                .enumerate()
                .map(|(i, f)| f / ff.get(i).copied().unwrap_or(1.0) as f64)
                .collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let (factor, lo, hi) = (
                    *factor as f64,
                    *low_freq_factor as f64,
                    *high_freq_factor as f64,
                );
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / lo;
                let high_wavelen = old / hi;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        scaled.into_iter().map(|f| f as f32).collect()
    }
}
