//! The trainable LoRA matrices: PEFT's initialisation, attaching them to the decoder, and PEFT's file format.

use std::collections::HashMap;
use std::path::Path;

use baimo_models::lora::{
    permute_rows_for_interleaved_rope, unpermute_rows_for_interleaved_rope, LoraDelta,
};
use baimo_models::{LoraAdapter, LoraTarget, Transformer};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{Result, TrainError};

/// Which projections get an adapter and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    /// PEFT module names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
            use_rslora: false,
        }
    }
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

pub struct Entry {
    pub target: LoraTarget,
    /// (r, in)
    pub a: Var,
    /// (out, r), rows in the model's layout (see [`LoraTarget::permuted_heads`]).
    pub b: Var,
}

pub struct LoraParams {
    pub spec: LoraSpec,
    pub entries: Vec<Entry>,
}

fn targets(model: &Transformer, spec: &LoraSpec) -> Result<Vec<LoraTarget>> {
    let all = model.lora_targets();
    for t in &spec.target_modules {
        if !all.iter().any(|x| &x.short == t) {
            return Err(TrainError::Config(format!(
                "unknown target module `{t}` (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
            )));
        }
    }
    Ok(all
        .into_iter()
        .filter(|t| spec.target_modules.contains(&t.short))
        .collect())
}

impl LoraParams {
    /// Fresh adapter initialised as PEFT does: A ~ kaiming-uniform(a=√5) = U(±1/√in), B = 0, so training
    /// starts from the base model exactly.
    pub fn init(model: &Transformer, spec: LoraSpec, seed: u64) -> Result<LoraParams> {
        if spec.rank == 0 {
            return Err(TrainError::Config("--rank must be at least 1".into()));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let entries = targets(model, &spec)?
            .into_iter()
            .map(|t| {
                let bound = 1.0 / (t.in_features as f32).sqrt();
                let a: Vec<f32> = (0..spec.rank * t.in_features)
                    .map(|_| rng.gen_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(a, (spec.rank, t.in_features), &Device::Cpu)?;
                let a = Var::from_tensor(&a.to_device(model.device())?)?;
                let b = Var::zeros((t.out_features, spec.rank), DType::F32, model.device())?;
                Ok(Entry { target: t, a, b })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LoraParams { spec, entries })
    }

    /// Trainable copy of an existing PEFT adapter (to continue training, or to check gradients).
    pub fn from_adapter(
        model: &Transformer,
        adapter: &LoraAdapter,
        dropout: f32,
    ) -> Result<LoraParams> {
        let spec = LoraSpec {
            rank: adapter.rank,
            alpha: adapter.alpha,
            dropout,
            target_modules: adapter.target_modules.clone(),
            use_rslora: adapter.use_rslora,
        };
        let mut entries = Vec::new();
        for t in model.lora_targets() {
            let Some(d) = adapter.delta(&t.path) else {
                continue;
            };
            let b = match t.permuted_heads {
                Some(h) => permute_rows_for_interleaved_rope(&d.b, h)?,
                None => d.b.clone(),
            };
            let dev = model.device();
            entries.push(Entry {
                a: Var::from_tensor(&d.a.to_device(dev)?.copy()?)?,
                b: Var::from_tensor(&b.to_device(dev)?.copy()?)?,
                target: t,
            });
        }
        if entries.is_empty() {
            return Err(TrainError::Config(format!(
                "{}: the adapter targets none of this model's projections",
                adapter.path.display()
            )));
        }
        Ok(LoraParams { spec, entries })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.entries
            .iter()
            .flat_map(|e| [e.a.clone(), e.b.clone()])
            .collect()
    }

    pub fn num_parameters(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.a.elem_count() + e.b.elem_count())
            .sum()
    }

    /// Puts the trainable matrices into the decoder (the forward pass then tracks their gradients).
    pub fn attach(&self, model: &mut Transformer, training: bool) -> Result<()> {
        for e in &self.entries {
            model.set_lora(
                &e.target.path,
                Some(LoraDelta {
                    a: e.a.as_tensor().clone(),
                    b: e.b.as_tensor().clone(),
                    scale: self.spec.scale(),
                    dropout: if training { self.spec.dropout } else { 0.0 },
                }),
            )?;
        }
        Ok(())
    }

    /// Tensors under PEFT's names, B rows back in Hugging Face's order.
    pub fn peft_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for e in &self.entries {
            let b = match e.target.permuted_heads {
                Some(h) => unpermute_rows_for_interleaved_rope(e.b.as_tensor(), h)?,
                None => e.b.as_tensor().clone(),
            };
            let p = &e.target.path;
            let cpu = &Device::Cpu;
            out.insert(
                format!("base_model.model.{p}.lora_A.weight"),
                e.a.as_tensor().to_device(cpu)?.copy()?,
            );
            out.insert(
                format!("base_model.model.{p}.lora_B.weight"),
                b.to_device(cpu)?.contiguous()?,
            );
        }
        Ok(out)
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` as PEFT's `save_pretrained` does.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        let io = |e: std::io::Error| TrainError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut targets = self.spec.target_modules.clone();
        targets.sort();
        let cfg = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.spec.rank,
            "lora_alpha": self.spec.alpha,
            "lora_dropout": self.spec.dropout,
            "target_modules": targets,
            "use_rslora": self.spec.use_rslora,
            "use_dora": false,
            "fan_in_fan_out": false,
            "bias": "none",
            "modules_to_save": null,
            "init_lora_weights": true,
            "inference_mode": true,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        std::fs::write(
            dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&cfg).unwrap_or_default(),
        )
        .map_err(io)?;
        let tensors = self.peft_tensors()?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
        let _ = meta;
        Ok(())
    }
}
