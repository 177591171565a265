//! A Hugging Face folder as a GGUF file, what llama.cpp's `convert_hf_to_gguf.py` writes for the `llama`,
//! `qwen2` and `qwen3` architectures, with a LoRA adapter merged into the weights first when one is given
//! (`baimo merge HF_DIR ADAPTER -o OUT.gguf`):
//!
//! - tensors under llama.cpp's names ([`hf_to_gguf_name`], the same map the GGUF loader reads with), in the
//!   folder's order; 1-D tensors (norms, biases) always F32, matrices in the chosen type, as the converter's
//!   `prepare_tensors` does; `lm_head.weight` left out when the embeddings are tied;
//! - on Llama, q/k rows (and biases) permuted into the order llama.cpp's interleaved rope expects
//!   (`LlamaModel.permute`, the reverse of what Meta's checkpoint conversion to Hugging Face did), and Llama 3
//!   rope scaling stored as per-frequency divisors in `rope_freqs.weight` (`generate_extra_tensors`);
//! - the hyper-parameters (`TextModel.set_gguf_parameters`, `LlamaModel.set_gguf_parameters`) and the tokenizer
//!   ([`baimo_tokenize::gguf_vocab_from_hf_dir`]).
//!
//! Not written: `general.basename`, `general.finetune`, `general.version` and the other descriptive keys gguf-py's
//! `Metadata` guesses from the folder name and model card (README.md); no loader reads them. Written from it:
//! `general.name` (`--model-name`, else the folder's name), `general.size_label` and the `general.sampling.*`
//! defaults of `generation_config.json`.

use std::collections::HashSet;
use std::path::Path;

use baimo_formats::gguf::{GgmlType, GgufWriter, Value};
use baimo_formats::safetensors::{Dtype, SafeTensorsFiles};
use candle_core::Tensor;

use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::lora::{permute_rows_for_interleaved_rope, LoraAdapter};
use crate::merge::{check_all_used, encode, file_type, float_bytes, merged, MergeReport, OutType};
use crate::weights::{hf_to_gguf_name, WeightSource};
use crate::{ModelError, Result};

/// One converted tensor: GGUF name, type, ggml dims (row length first), bytes.
type Converted = (String, GgmlType, Vec<u64>, Vec<u8>);

/// Converts the Hugging Face folder `base` to the GGUF file `dest`, merging `adapter` (if any) into its weights.
/// `out` is the type of every matrix ([`OutType::Keep`]: the folder's own dtype); `name` is `general.name`
/// (the converter's `--model-name`; by default, as there, the folder's name).
pub fn merge_hf_to_gguf(
    base: &Path,
    adapter: Option<&LoraAdapter>,
    out: OutType,
    name: Option<&str>,
    dest: &Path,
) -> Result<MergeReport> {
    let cfg = ModelConfig::from_hf_config(&base.join("config.json"))?;
    // The tokenizer first: one that cannot be converted fails before any arithmetic.
    let vocab = baimo_tokenize::gguf_vocab_from_hf_dir(base, cfg.vocab_size)?;
    let files = SafeTensorsFiles::open(base)?;
    let mut report = MergeReport::default();
    let mut tensors: Vec<Converted> = Vec::new();
    if let Some(factors) = rope_freqs(&cfg)? {
        let dims = vec![factors.len() as u64];
        let bytes = factors.iter().flat_map(|f| f.to_le_bytes()).collect();
        tensors.push(("rope_freqs.weight".into(), GgmlType::F32, dims, bytes));
    }
    let mut used = HashSet::new();
    for hf in files.names() {
        // Neither is a weight of the GGUF model: rotary frequencies are recomputed, tied heads share token_embd.
        if hf.ends_with(".rotary_emb.inv_freq")
            || (cfg.tie_word_embeddings && hf == "lm_head.weight")
        {
            continue;
        }
        let gguf = hf_to_gguf_name(hf).ok_or_else(|| ModelError::UnmappedTensor {
            name: hf.clone(),
            arch: cfg.arch.name(),
        })?;
        let mut t = WeightSource::require(&files, hf)?.into_f32()?;
        let module = hf.strip_suffix(".weight");
        if let Some((m, d)) = module.and_then(|m| Some((m, adapter?.delta(m)?))) {
            t = merged(hf, &t, d, None)?;
            used.insert(m.to_string());
            report.merged += 1;
        }
        if let Some(heads) = rope_heads(hf, &cfg) {
            t = permute_for_rope(&t, heads, permute_rows_for_interleaved_rope)?;
        }
        let dims: Vec<u64> = t.dims().iter().rev().map(|&d| d as u64).collect();
        let (ty, bytes) = if t.rank() == 2 {
            let target = match out {
                OutType::All(ty) => ty,
                OutType::Keep => stored_type(&files, hf),
            };
            let (written, bytes) = encode(&t, target)?;
            if written != target {
                report.fallbacks.push((gguf.clone(), target, written));
            }
            (written, bytes)
        } else {
            (GgmlType::F32, float_bytes(&t, f32::to_le_bytes)?)
        };
        tensors.push((gguf, ty, dims, bytes));
    }
    if let Some(a) = adapter {
        check_all_used(a, &used)?;
    }
    let matrix_type = match out {
        OutType::All(ty) => Some(ty),
        // The converter's `GUESSED` file type: that of the first matrix.
        OutType::Keep => tensors.iter().find(|t| t.2.len() == 2).map(|t| t.1),
    };
    let params: u64 = tensors.iter().map(|t| t.2.iter().product::<u64>()).sum();
    let folder = base
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let name = name.map(str::to_string).or(folder).unwrap_or_default();

    let mut w = GgufWriter::new();
    hyper_parameters(
        &mut w,
        base,
        &cfg,
        &name,
        params,
        matrix_type.and_then(file_type),
    )?;
    if cfg.arch == Arch::Llama {
        if let Some(b) = vocab.add_prefix_space {
            w.add_kv("tokenizer.ggml.add_space_prefix", Value::Bool(b));
        }
    }
    for (k, v) in vocab.metadata {
        w.add_kv(&k, v);
    }
    if cfg.arch == Arch::Llama && cfg.vocab_size == SMALL_GRANITE_VOCAB {
        w.add_kv("tokenizer.ggml.add_bos_token", Value::Bool(false));
    }
    for (name, ty, dims, bytes) in tensors {
        w.add_tensor(&name, ty, &dims, bytes)?;
        report.tensors += 1;
    }
    w.write_to_path(dest)?;
    Ok(report)
}

/// The converter's `LlamaModel.set_vocab` writes `add_bos_token = false` for a Llama-architecture model with
/// this many embedding rows ("granite small models": Granite 3, SmolLM/SmolLM2), whatever the tokenizer files
/// say; an existing key keeps its place (gguf-py overwrites it), a new one comes last.
const SMALL_GRANITE_VOCAB: usize = 49152;

/// `general.*` and `{arch}.*` keys in the converter's order.
fn hyper_parameters(
    w: &mut GgufWriter,
    base: &Path,
    cfg: &ModelConfig,
    name: &str,
    params: u64,
    ftype: Option<u32>,
) -> Result<()> {
    let arch = cfg.arch.name();
    let key = |k: &str| format!("{arch}.{k}");
    let u32_of = |what: &str, v: usize| {
        u32::try_from(v)
            .map(Value::U32)
            .map_err(|_| ModelError::BadConfig(format!("{what} = {v} does not fit a GGUF u32")))
    };
    w.add_kv("general.architecture", Value::from(arch));
    w.add_kv("general.type", Value::from("model"));
    for (k, v) in sampling_defaults(base)? {
        w.add_kv(&k, v);
    }
    w.add_kv("general.name", Value::from(name));
    w.add_kv("general.size_label", Value::String(size_label(params)));
    for (k, v) in [
        ("block_count", cfg.num_hidden_layers),
        ("context_length", cfg.max_position_embeddings),
        ("embedding_length", cfg.hidden_size),
        ("feed_forward_length", cfg.intermediate_size),
        ("attention.head_count", cfg.num_attention_heads),
        ("attention.head_count_kv", cfg.num_key_value_heads),
    ] {
        w.add_kv(&key(k), u32_of(k, v)?);
    }
    if let Some(RopeScaling::Linear { factor }) = cfg.rope_scaling {
        w.add_kv(&key("rope.scaling.type"), Value::from("linear"));
        w.add_kv(&key("rope.scaling.factor"), Value::F32(factor));
    }
    w.add_kv(&key("rope.freq_base"), Value::F32(cfg.rope_theta));
    w.add_kv(
        &key("attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.rms_norm_eps as f32),
    );
    // transformers' LlamaConfig and Qwen3Config always carry head_dim, so the converter writes it for them;
    // Qwen2Config only has one when config.json does, which matters only when it is not hidden / heads.
    if cfg.arch != Arch::Qwen2 || cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
        w.add_kv(
            &key("attention.key_length"),
            u32_of("head_dim", cfg.head_dim)?,
        );
        w.add_kv(
            &key("attention.value_length"),
            u32_of("head_dim", cfg.head_dim)?,
        );
    }
    if let Some(ft) = ftype {
        w.add_kv("general.file_type", Value::U32(ft));
    }
    if cfg.arch == Arch::Llama {
        w.add_kv(&key("vocab_size"), u32_of("vocab_size", cfg.vocab_size)?);
        w.add_kv(
            &key("rope.dimension_count"),
            u32_of("head_dim", cfg.head_dim)?,
        );
    }
    // gguf-py's GGML_QUANT_VERSION.
    w.add_kv("general.quantization_version", Value::U32(2));
    Ok(())
}

/// The publisher's recommended sampling settings from `generation_config.json`, as `general.sampling.*` (gguf-py
/// `Metadata.load` and `set_gguf_meta_model`; llama.cpp uses them as its defaults): (key, integer or not).
pub(crate) const SAMPLING: [(&str, &str, bool); 12] = [
    ("sequence", "sequence", false),
    ("top_k", "top_k", true),
    ("top_p", "top_p", false),
    ("min_p", "min_p", false),
    ("xtc_probability", "xtc_probability", false),
    ("xtc_threshold", "xtc_threshold", false),
    ("temperature", "temp", false),
    ("penalty_last_n", "penalty_last_n", true),
    ("repetition_penalty", "penalty_repeat", false),
    ("mirostat", "mirostat", true),
    ("mirostat_tau", "mirostat_tau", false),
    ("mirostat_eta", "mirostat_eta", false),
];

/// `general.sampling.*` for the values `base/generation_config.json` has.
fn sampling_defaults(base: &Path) -> Result<Vec<(String, Value)>> {
    let path = base.join("generation_config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ModelError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (hf, gguf, integer) in SAMPLING {
        // gguf-py reads `penalty_repeat` before transformers' `repetition_penalty`.
        let v = match hf {
            "repetition_penalty" => j.get("penalty_repeat").or_else(|| j.get(hf)),
            _ => j.get(hf),
        };
        let value = match v {
            Some(serde_json::Value::String(s)) if hf == "sequence" => Value::String(s.clone()),
            Some(n) if integer => match n.as_i64().and_then(|n| i32::try_from(n).ok()) {
                Some(n) => Value::I32(n),
                None => continue,
            },
            Some(n) => match n.as_f64() {
                Some(x) => Value::F32(x as f32),
                None => continue,
            },
            None => continue,
        };
        out.push((format!("general.sampling.{gguf}"), value));
    }
    Ok(out)
}

/// The head count of the q/k projection (weight or bias) `hf` on Llama, whose rows the converter permutes.
pub(crate) fn rope_heads(hf: &str, cfg: &ModelConfig) -> Option<usize> {
    if cfg.arch != Arch::Llama {
        return None;
    }
    let module = hf.rsplit_once('.')?.0;
    if module.ends_with("self_attn.q_proj") {
        Some(cfg.num_attention_heads)
    } else if module.ends_with("self_attn.k_proj") {
        Some(cfg.num_key_value_heads)
    } else {
        None
    }
}

/// A row permutation of q/k for llama.cpp's rope ([`permute_rows_for_interleaved_rope`] or its inverse).
pub(crate) type RowPermutation = fn(&Tensor, usize) -> Result<Tensor>;

/// `LlamaModel.permute` (or, with the inverse `rows`, its undoing) on a weight (rows × cols) or a bias (rows).
pub(crate) fn permute_for_rope(t: &Tensor, heads: usize, rows: RowPermutation) -> Result<Tensor> {
    if t.rank() == 1 {
        let n = t.dim(0)?;
        return Ok(rows(&t.reshape((n, 1))?, heads)?.reshape(n)?);
    }
    rows(t, heads)
}

/// The GGUF type of the folder's own dtype for `name`.
fn stored_type(files: &SafeTensorsFiles, name: &str) -> GgmlType {
    match files.info(name).map(|h| h.dtype) {
        Some(Dtype::F16) => GgmlType::F16,
        Some(Dtype::BF16) => GgmlType::BF16,
        _ => GgmlType::F32,
    }
}

/// `rope_freqs.weight` for Llama 3 rope scaling: the divisor of each rotary frequency, computed in f32 the way
/// the converter's torch code does (`LlamaModel.generate_extra_tensors`), so the bytes match its file.
fn rope_freqs(cfg: &ModelConfig) -> Result<Option<Vec<f32>>> {
    let Some(scaling @ RopeScaling::Llama3 { .. }) = &cfg.rope_scaling else {
        return Ok(None);
    };
    if cfg.arch != Arch::Llama {
        return Err(ModelError::UnsupportedRopeScaling(format!(
            "llama3 on a {} model (llama.cpp's converter has it for llama only)",
            cfg.arch.name()
        )));
    }
    Ok(llama3_freq_factors(scaling, cfg.rope_theta, cfg.head_dim))
}

/// The per-frequency divisors of Llama 3 rope scaling (`None` for any other scaling), in f32 as llama.cpp's
/// converter computes them.
pub(crate) fn llama3_freq_factors(
    scaling: &RopeScaling,
    theta: f32,
    head_dim: usize,
) -> Option<Vec<f32>> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor: lo,
        high_freq_factor: hi,
        original_max_position_embeddings: old,
    } = *scaling
    else {
        return None;
    };
    let d = head_dim;
    let old = old as f32;
    let (low_wavelen, high_wavelen) = (old / lo, old / hi);
    let two_pi = std::f64::consts::TAU as f32;
    let factors = (0..d)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 / theta.powf(i as f32 / d as f32);
            let wavelen = two_pi / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - lo) / (hi - lo);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect();
    Some(factors)
}

/// gguf-py's `size_label` for a dense model (`model_weight_count_rounded_notation`, two significant digits at
/// least): 115008 → "115K", 494032768 → "494M", 1543714304 → "1.5B".
fn size_label(params: u64) -> String {
    let n = params as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let whole = format!("{}", scaled.round() as u64);
    let digits = whole.trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_as_gguf_py() {
        assert_eq!(size_label(115_008), "115K");
        assert_eq!(size_label(94_784), "95K");
        assert_eq!(size_label(494_032_768), "494M");
        assert_eq!(size_label(1_543_714_304), "1.5B");
        assert_eq!(size_label(135_000_000), "135M");
        assert_eq!(size_label(400), "0.40K");
    }

    #[test]
    fn sampling_defaults_from_generation_config() {
        let dir = std::env::temp_dir().join(format!("baimo-hf-gguf-gen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(sampling_defaults(&dir).unwrap().is_empty());
        let qwen = r#"{"do_sample": true, "eos_token_id": [151645, 151643], "repetition_penalty": 1.1,
            "temperature": 0.7, "top_p": 0.8, "top_k": 20}"#;
        std::fs::write(dir.join("generation_config.json"), qwen).unwrap();
        let got = sampling_defaults(&dir).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        // As llama.cpp's converter wrote them into Qwen2-0.5B's GGUF.
        let want = [
            ("general.sampling.top_k", Value::I32(20)),
            ("general.sampling.top_p", Value::F32(0.8)),
            ("general.sampling.temp", Value::F32(0.7)),
            ("general.sampling.penalty_repeat", Value::F32(1.1)),
        ];
        let want: Vec<(String, Value)> = want.into_iter().map(|(k, v)| (k.into(), v)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn llama_q_and_k_are_permuted_by_their_head_counts() {
        let text = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8}"#;
        let dir = std::env::temp_dir().join(format!("baimo-hf-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), text).unwrap();
        let cfg = ModelConfig::from_hf_config(&dir.join("config.json")).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            rope_heads("model.layers.0.self_attn.q_proj.weight", &cfg),
            Some(4)
        );
        assert_eq!(
            rope_heads("model.layers.0.self_attn.k_proj.bias", &cfg),
            Some(2)
        );
        assert_eq!(
            rope_heads("model.layers.0.self_attn.v_proj.weight", &cfg),
            None
        );
        // A bias is permuted like a one-column weight: head 0 of [0..8) with head_dim 4 → 0, 2, 1, 3.
        let b = Tensor::arange(0f32, 8., &candle_core::Device::Cpu).unwrap();
        let p = permute_for_rope(&b, 2, permute_rows_for_interleaved_rope)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(p, [0., 2., 1., 3., 4., 6., 5., 7.]);
    }
}
