//! A GGUF model as a Hugging Face folder, with a LoRA adapter merged into its weights first when one is given
//! (`baimo merge model.gguf ADAPTER -o DIR`): a folder transformers' `AutoModelForCausalLM.from_pretrained`
//! and `AutoTokenizer.from_pretrained` load.
//!
//! - `model.safetensors`: every tensor under its Hugging Face name (the inverse of the one name table,
//!   [`gguf_to_hf_name`]), dequantized and stored in the chosen float type; on Llama the q/k rows (and biases)
//!   put back in Hugging Face's order (undoing `LlamaModel.permute` of llama.cpp's converter; qwen2/qwen3 files
//!   are not permuted); no `lm_head.weight` when the file has no `output.weight` (tied embeddings);
//! - `config.json` from the `{arch}.*` hyper-parameters, with Llama 3 rope scaling recovered from
//!   `rope_freqs.weight` ([`llama3_from_factors`]);
//! - `generation_config.json`: BOS, the end-of-generation ids (EOS first) and the `general.sampling.*` defaults;
//! - `tokenizer.json` and `tokenizer_config.json` from the GGUF vocabulary ([`Tokenizer::hf_files`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use baimo_formats::gguf::GgufFile;
use baimo_tokenize::Tokenizer;
use candle_core::DType;
use serde_json::{json, Value as Json};

use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::hf_gguf::{llama3_freq_factors, permute_for_rope, rope_heads, SAMPLING};
use crate::lora::{unpermute_rows_for_interleaved_rope, LoraAdapter};
use crate::merge::{check_all_used, merged, save_safetensors, MergeReport};
use crate::weights::{gguf_to_hf_name, WeightSource};
use crate::{ModelError, Result};

/// The float types a Hugging Face folder is written in: `f32`, `f16`, `bf16`.
pub fn parse_hf_dtype(s: &str) -> std::result::Result<DType, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(format!(
            "unknown output type `{s}` for a Hugging Face folder (f32, f16, bf16)"
        )),
    }
}

/// transformers' name of a dtype (`torch_dtype`).
fn torch_dtype(d: DType) -> &'static str {
    match d {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Writes the GGUF model `g`, with `adapter` (if any) merged, as a Hugging Face folder `dest` (created if
/// needed) whose tensors are all `dtype`.
pub fn merge_gguf_to_hf(
    g: &GgufFile,
    adapter: Option<&LoraAdapter>,
    dtype: DType,
    dest: &Path,
) -> Result<MergeReport> {
    let cfg = ModelConfig::from_gguf(g)?;
    // Tokenizer and rope scaling first: what cannot be written fails before any arithmetic.
    let tok = Tokenizer::from_gguf(g)?;
    let tok_files = tok.hf_files(Some(cfg.max_position_embeddings))?;
    let rope_scaling = rope_scaling(g, &cfg)?;
    let mut report = MergeReport::default();
    let mut used = HashSet::new();
    let mut out = HashMap::new();
    for info in &g.tensors {
        // Recomputed from config.json's rope_scaling by transformers.
        if info.name == "rope_freqs.weight" {
            continue;
        }
        let hf = gguf_to_hf_name(&info.name).ok_or_else(|| ModelError::NoHfName {
            name: info.name.clone(),
            arch: cfg.arch.name(),
        })?;
        let mut t = WeightSource::require(g, &hf)?.into_f32()?;
        if let Some(heads) = rope_heads(&hf, &cfg) {
            t = permute_for_rope(&t, heads, unpermute_rows_for_interleaved_rope)?;
        }
        let module = hf.strip_suffix(".weight");
        if let Some((m, d)) = module.and_then(|m| Some((m, adapter?.delta(m)?))) {
            // W is in Hugging Face's row order now, as the adapter is: no permutation of B.
            t = merged(&hf, &t, d, None)?;
            used.insert(m.to_string());
            report.merged += 1;
        }
        out.insert(hf, t.to_dtype(dtype)?);
        report.tensors += 1;
    }
    if let Some(a) = adapter {
        check_all_used(a, &used)?;
    }
    std::fs::create_dir_all(dest).map_err(|e| io(dest, e))?;
    save_safetensors(&out, dest)?;
    drop(out);
    let config = hf_config(&cfg, &tok, dtype, rope_scaling);
    write_json(&dest.join("config.json"), &config)?;
    write_json(
        &dest.join("generation_config.json"),
        &generation_config(g, &tok),
    )?;
    write_json(&dest.join("tokenizer.json"), &tok_files.tokenizer)?;
    write_json(&dest.join("tokenizer_config.json"), &tok_files.config)?;
    Ok(report)
}

fn io(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Pretty JSON with a final newline, as transformers' `save_pretrained` writes it.
fn write_json(path: &Path, v: &Json) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).map_err(|e| ModelError::Json {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| io(path, e))
}

/// An f32 from GGUF metadata as the shortest decimal that reads back to it (1e-5, not 9.999999747378752e-6).
fn f32_json(x: f32) -> Json {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

/// `config.json`'s `rope_scaling`: linear from `{arch}.rope.scaling.*`, Llama 3 from `rope_freqs.weight`.
fn rope_scaling(g: &GgufFile, cfg: &ModelConfig) -> Result<Json> {
    if let Some(RopeScaling::Linear { factor }) = cfg.rope_scaling {
        return Ok(json!({"rope_type": "linear", "factor": f32_json(factor)}));
    }
    let Some(w) = WeightSource::get(g, "rope_freqs.weight")? else {
        return Ok(Json::Null);
    };
    let factors = w.into_f32()?.flatten_all()?.to_vec1::<f32>()?;
    match llama3_from_factors(&factors, cfg.rope_theta, cfg.head_dim) {
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => Ok(json!({
            "rope_type": "llama3",
            "factor": f32_json(factor),
            "low_freq_factor": f32_json(low_freq_factor),
            "high_freq_factor": f32_json(high_freq_factor),
            "original_max_position_embeddings": original_max_position_embeddings,
        })),
        Some(RopeScaling::FreqFactors(_)) => Ok(Json::Null),
        _ => Err(ModelError::UnsupportedRopeScaling(format!(
            "rope_freqs.weight {factors:?} is not Llama 3 scaling, which is all config.json can express"
        ))),
    }
}

/// The Llama 3 rope-scaling parameters whose divisors (computed as llama.cpp's converter does) are `factors`,
/// or `FreqFactors` when all are 1 (nothing to scale), or `None` when no parameters give them.
///
/// The divisors fix `factor` (that of the lowest frequencies) and, through the smoothly scaled frequencies in
/// between, `original_max_position_embeddings` and the two frequency factors up to one common scale; that
/// scale is fixed by `low_freq_factor = 1`, which every Llama 3.x release has. With fewer than two smoothed
/// frequencies `high_freq_factor` is taken as Meta's 4; with none, the context is the power of two (else
/// the whole number) in the range the unscaled and fully scaled frequencies leave.
pub(crate) fn llama3_from_factors(
    factors: &[f32],
    theta: f32,
    head_dim: usize,
) -> Option<RopeScaling> {
    let factor = factors.iter().copied().fold(1.0f32, f32::max);
    if factor == 1.0 {
        return Some(RopeScaling::FreqFactors(factors.to_vec()));
    }
    let lo = 1.0f64;
    let freq = |i: usize| 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
    let tol = 1e-4;
    // (freq / 2π, smooth) of the frequencies between the two plateaus: smooth = a · freq/2π + b.
    let smooth: Vec<(f64, f64)> = factors
        .iter()
        .enumerate()
        .filter(|(_, &f)| f > 1.0 + tol && f < factor - tol)
        .map(|(i, &f)| {
            let inv = 1.0 / factor as f64;
            (
                freq(i) / std::f64::consts::TAU,
                (1.0 / f as f64 - inv) / (1.0 - inv),
            )
        })
        .collect();
    let (hi, old) = match smooth.as_slice() {
        [] => {
            let hi = 4.0;
            // Unscaled: wavelen < old / hi; fully scaled: wavelen > old / lo.
            let wavelen = |i: usize| std::f64::consts::TAU / freq(i);
            let mut low = 0f64;
            let mut high = f64::INFINITY;
            for (i, &f) in factors.iter().enumerate() {
                if f <= 1.0 + tol {
                    low = low.max(hi * wavelen(i));
                } else {
                    high = high.min(lo * wavelen(i));
                }
            }
            let pow2 = (0..40)
                .map(|k| (1u64 << k) as f64)
                .find(|&p| p > low && p < high);
            (
                hi,
                pow2.unwrap_or(((low + high.min(low * 2.0)) / 2.0).round()),
            )
        }
        [(y, s)] => {
            let hi = 4.0;
            (hi, (lo + s * (hi - lo)) / y)
        }
        [(y0, s0), .., (y1, s1)] => {
            let a = (s1 - s0) / (y1 - y0);
            let b = s0 - a * y0;
            if b >= 0.0 {
                return None;
            }
            let hi = lo - 1.0 / b;
            ((hi * 1000.0).round() / 1000.0, -a / b)
        }
    };
    let old = old.round();
    if !(old >= 1.0 && old < u32::MAX as f64 && hi > lo) {
        return None;
    }
    let scaling = RopeScaling::Llama3 {
        factor,
        low_freq_factor: lo as f32,
        high_freq_factor: hi as f32,
        original_max_position_embeddings: old as usize,
    };
    let again = llama3_freq_factors(&scaling, theta, head_dim)?;
    let same = again.len() == factors.len()
        && again
            .iter()
            .zip(factors)
            .all(|(x, y)| (x - y).abs() <= 1e-3 * y.abs());
    same.then_some(scaling)
}

/// `config.json` as transformers' `LlamaConfig` / `Qwen2Config` / `Qwen3Config` save it.
fn hf_config(cfg: &ModelConfig, tok: &Tokenizer, dtype: DType, rope_scaling: Json) -> Json {
    let class = match cfg.arch {
        Arch::Llama => "LlamaForCausalLM",
        Arch::Qwen2 => "Qwen2ForCausalLM",
        Arch::Qwen3 => "Qwen3ForCausalLM",
    };
    let mut c = json!({
        "architectures": [class],
        "model_type": cfg.arch.name(),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": f32_json(cfg.rms_norm_eps as f32),
        "rope_theta": f32_json(cfg.rope_theta),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": tok.bos_id(),
        "eos_token_id": tok.eos_id(),
        "torch_dtype": torch_dtype(dtype),
        "use_cache": true,
    });
    match cfg.arch {
        Arch::Llama => {
            c["attention_bias"] = Json::Bool(cfg.attention_bias);
            c["mlp_bias"] = Json::Bool(false);
        }
        Arch::Qwen2 => {
            c["use_sliding_window"] = Json::Bool(false);
            // Qwen2Config has head_dim only when it is not hidden / heads.
            if cfg.head_dim * cfg.num_attention_heads == cfg.hidden_size {
                if let Some(o) = c.as_object_mut() {
                    o.remove("head_dim");
                }
            }
        }
        Arch::Qwen3 => c["attention_bias"] = Json::Bool(false),
    }
    c
}

/// `generation_config.json`: BOS, EOS and the other end-of-generation ids llama.cpp stops at (transformers
/// stops at any id of the list), padding, and the publisher's sampling defaults (`general.sampling.*`, written
/// from a `generation_config.json` by llama.cpp's converter).
fn generation_config(g: &GgufFile, tok: &Tokenizer) -> Json {
    let mut eos: Vec<u32> = tok.eos_id().into_iter().collect();
    for id in tok.eog_ids() {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    let mut c = json!({"bos_token_id": tok.bos_id()});
    c["eos_token_id"] = match eos.as_slice() {
        [] => Json::Null,
        [one] => Json::from(*one),
        many => Json::from(many.to_vec()),
    };
    if let Some(p) = tok.pad_id() {
        c["pad_token_id"] = Json::from(p);
    }
    let known = [
        "top_k",
        "top_p",
        "min_p",
        "temperature",
        "repetition_penalty",
    ];
    let mut sampling = false;
    for (hf, key, integer) in SAMPLING {
        let Some(v) = g.header().get(&format!("general.sampling.{key}")) else {
            continue;
        };
        if !known.contains(&hf) {
            continue;
        }
        c[hf] = if integer {
            v.as_i64().map_or(Json::Null, Json::from)
        } else {
            v.as_f32().map_or(Json::Null, f32_json)
        };
        sampling = true;
    }
    if sampling {
        c["do_sample"] = Json::Bool(true);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama3(factor: f32, hi: f32, old: usize) -> RopeScaling {
        RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: hi,
            original_max_position_embeddings: old,
        }
    }

    #[test]
    fn llama3_scaling_is_recovered_from_its_divisors() {
        // Llama 3.1 8B and 3.2 1B (head_dim 128 / 64), the tiny fixture (head_dim 16, context 64).
        for (s, theta, d) in [
            (llama3(8.0, 4.0, 8192), 500_000.0, 128),
            (llama3(32.0, 4.0, 8192), 500_000.0, 64),
            (llama3(8.0, 4.0, 64), 500_000.0, 16),
            (llama3(16.0, 2.0, 4096), 10_000.0, 64),
        ] {
            let f = llama3_freq_factors(&s, theta, d).unwrap();
            assert_eq!(llama3_from_factors(&f, theta, d), Some(s), "{f:?}");
        }
        assert!(matches!(
            llama3_from_factors(&[1.0; 8], 1e4, 16),
            Some(RopeScaling::FreqFactors(_))
        ));
        // Divisors no Llama 3 parameters give.
        assert_eq!(llama3_from_factors(&[1.0, 3.0, 1.5, 8.0], 1e4, 8), None);
    }

    #[test]
    fn dtypes_parse() {
        assert_eq!(parse_hf_dtype("BF16"), Ok(DType::BF16));
        assert!(parse_hf_dtype("q4_k").unwrap_err().contains("f16"));
        // GGUF stores 1e-5 as the f32 9.9999997e-6; written back as 1e-5.
        assert_eq!(f32_json(1e-5f32), json!(1e-5));
        assert_eq!(f32_json(1e6), json!(1e6));
    }
}
