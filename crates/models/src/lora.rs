//! LoRA adapters (Hu et al. 2021) in Hugging Face PEFT's on-disk format, applied without merging:
//! `y = W x + scale · B (A x)` with `scale = alpha / r` (or `alpha / √r` for rsLoRA).
//!
//! PEFT saves `adapter_config.json` and `adapter_model.safetensors` whose tensors are named
//! `base_model.model.<module path>.lora_A.weight` (r × in) and `…lora_B.weight` (out × r), module paths as in
//! the transformers model (`model.layers.3.self_attn.q_proj`), which are also the names Baimo's decoder uses
//! for every file format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use baimo_formats::safetensors::SafeTensorsFiles;
use candle_core::Tensor;
use serde_json::Value;

use crate::weights::WeightSource;
use crate::{ModelError, Result};

/// One module's low-rank update.
#[derive(Clone)]
pub struct LoraDelta {
    /// (r, in)
    pub a: Tensor,
    /// (out, r)
    pub b: Tensor,
    pub scale: f64,
    /// Dropout on the adapter's input while training (PEFT's `lora_dropout`); 0 at inference.
    pub dropout: f32,
}

impl LoraDelta {
    /// The same update with A and B on `dev` (the same tensors, so the same autograd variables, where they
    /// are there already).
    pub fn to_device(&self, dev: &candle_core::Device) -> Result<LoraDelta> {
        Ok(LoraDelta {
            a: self.a.to_device(dev)?,
            b: self.b.to_device(dev)?,
            ..self.clone()
        })
    }
}

/// A loaded adapter: the low-rank update of each targeted module.
pub struct LoraAdapter {
    pub path: PathBuf,
    pub rank: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub target_modules: Vec<String>,
    deltas: HashMap<String, LoraDelta>,
}

fn bad(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Json {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl LoraAdapter {
    /// Reads a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn load(dir: &Path) -> Result<LoraAdapter> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| ModelError::Io {
            path: cfg_path.display().to_string(),
            source,
        })?;
        let cfg: Value = serde_json::from_str(&text).map_err(|e| bad(&cfg_path, e.to_string()))?;
        let peft_type = cfg
            .get("peft_type")
            .and_then(Value::as_str)
            .unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(
                &cfg_path,
                format!("peft_type {peft_type} is not supported (only LORA)"),
            ));
        }
        let rank = cfg
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| bad(&cfg_path, "missing or invalid `r`"))? as usize;
        let alpha = cfg
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .unwrap_or(rank as f64);
        let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
        let use_rslora = flag("use_rslora");
        for unsupported in ["use_dora", "fan_in_fan_out"] {
            if flag(unsupported) {
                return Err(bad(
                    &cfg_path,
                    format!("`{unsupported}: true` is not supported"),
                ));
            }
        }
        for k in ["rank_pattern", "alpha_pattern"] {
            if cfg
                .get(k)
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty())
            {
                return Err(bad(&cfg_path, format!("per-module `{k}` is not supported")));
            }
        }
        if cfg
            .get("bias")
            .and_then(Value::as_str)
            .is_some_and(|b| b != "none")
        {
            return Err(bad(
                &cfg_path,
                "trained biases (`bias` other than \"none\") are not supported",
            ));
        }
        if cfg.get("modules_to_save").is_some_and(|m| !m.is_null()) {
            return Err(bad(
                &cfg_path,
                "`modules_to_save` (fully trained extra modules) is not supported",
            ));
        }
        let target_modules = match cfg.get("target_modules") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let scale = if use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        };

        let st_path = dir.join("adapter_model.safetensors");
        let files = SafeTensorsFiles::open(&st_path)?;
        let mut a_of: HashMap<String, Tensor> = HashMap::new();
        let mut b_of: HashMap<String, Tensor> = HashMap::new();
        for name in files.names().to_vec() {
            let Some((module, which)) = split_name(&name) else {
                return Err(bad(
                    &st_path,
                    format!("unexpected tensor `{name}` in a LoRA adapter"),
                ));
            };
            let t = files.require(&name)?.into_f32()?;
            match which {
                'A' => a_of.insert(module, t),
                _ => b_of.insert(module, t),
            };
        }
        let mut deltas = HashMap::new();
        for (module, a) in a_of {
            let b = b_of
                .remove(&module)
                .ok_or_else(|| bad(&st_path, format!("`{module}` has lora_A but no lora_B")))?;
            let (ra, _) = a.dims2()?;
            let (_, rb) = b.dims2()?;
            if ra != rank || rb != rank {
                return Err(bad(
                    &st_path,
                    format!("`{module}`: rank {ra}/{rb} in the tensors, r = {rank} in the config"),
                ));
            }
            deltas.insert(
                module,
                LoraDelta {
                    a,
                    b,
                    scale,
                    dropout: 0.0,
                },
            );
        }
        if let Some(module) = b_of.keys().next() {
            return Err(bad(
                &st_path,
                format!("`{module}` has lora_B but no lora_A"),
            ));
        }
        if deltas.is_empty() {
            return Err(bad(&st_path, "the adapter holds no LoRA tensors"));
        }
        Ok(LoraAdapter {
            path: dir.to_path_buf(),
            rank,
            alpha,
            use_rslora,
            target_modules,
            deltas,
        })
    }

    /// The update for a module path such as `model.layers.0.self_attn.q_proj`.
    pub fn delta(&self, module: &str) -> Option<&LoraDelta> {
        self.deltas.get(module)
    }

    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.deltas.keys().map(String::as_str)
    }
}

/// The projections of a decoder layer LoRA can adapt, in the order [`ServedAdapter`] stores them.
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Indices into [`PROJECTIONS`].
pub(crate) mod slot {
    pub const Q: usize = 0;
    pub const K: usize = 1;
    pub const V: usize = 2;
    pub const O: usize = 3;
    pub const GATE: usize = 4;
    pub const UP: usize = 5;
    pub const DOWN: usize = 6;
}

/// An adapter prepared for one model ([`crate::Transformer::prepare_adapter`]), chosen per sequence in a batched
/// forward pass ([`crate::SeqSlice::adapter`]), so sequences with different adapters, and none, share one batch
/// over the one frozen base (Sheng et al. 2023, "S-LoRA"). The model itself is not changed.
pub struct ServedAdapter {
    id: u64,
    path: PathBuf,
    /// Per layer, per [`PROJECTIONS`] slot: the update, B's rows already in the model's layout.
    pub(crate) layers: Vec<[Option<LoraDelta>; 7]>,
}

static NEXT_ADAPTER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ServedAdapter {
    pub(crate) fn new(path: PathBuf, layers: Vec<[Option<LoraDelta>; 7]>) -> ServedAdapter {
        ServedAdapter {
            id: NEXT_ADAPTER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            path,
            layers,
        }
    }

    /// Unique for each preparation in this process: two adapters (or one loaded twice) never share an id, so it
    /// can key caches of what the adapter computed (the serving prefix cache's keys and values).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The folder the adapter was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The update of projection `slot` of `layer`, if the adapter targets it.
    pub(crate) fn delta(&self, layer: usize, slot: usize) -> Option<&LoraDelta> {
        self.layers.get(layer).and_then(|l| l[slot].as_ref())
    }
}

impl std::fmt::Debug for ServedAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedAdapter")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `base_model.model.model.layers.0.mlp.up_proj.lora_A.weight` → (`model.layers.0.mlp.up_proj`, 'A').
/// Also accepts names with an adapter name (`lora_A.default.weight`) or without the PEFT prefix.
fn split_name(name: &str) -> Option<(String, char)> {
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    for (tag, which) in [(".lora_A", 'A'), (".lora_B", 'B')] {
        if let Some(i) = name.find(tag) {
            return Some((name[..i].to_string(), which));
        }
    }
    None
}

/// Inverse of [`permute_rows_for_interleaved_rope`]: back to Hugging Face's row order (for export).
pub fn unpermute_rows_for_interleaved_rope(b: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, r) = b.dims2()?;
    let hd = out / n_head;
    Ok(b.reshape((n_head, hd / 2, 2, r))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, r))?)
}

/// llama.cpp's converter permutes the rows of q_proj/k_proj for Llama so that interleaved (GPT-J style) rope
/// matches HF's half-split rope; an adapter trained against HF's layout needs the same permutation of B's rows.
pub fn permute_rows_for_interleaved_rope(b: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, r) = b.dims2()?;
    let hd = out / n_head;
    Ok(b.reshape((n_head, 2, hd / 2, r))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, r))?)
}
