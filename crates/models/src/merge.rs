//! `baimo merge`: a LoRA adapter folded into its base weights, `W' = W + scale · B A`, written as a model file
//! that any engine loads without LoRA support.
//!
//! - A GGUF base gives a GGUF file: metadata copied, every tensor the adapter does not touch copied byte for
//!   byte (or converted when an output type is asked for), each merged matrix computed in f32 from the
//!   dequantized weight and stored in the chosen type (quantized with candle's ports of ggml's reference
//!   quantizers). On GGUF Llama files q/k rows are in llama.cpp's rope order, so B's rows are permuted the same
//!   way first (as when the adapter is applied unmerged).
//! - A Hugging Face folder gives a Hugging Face folder: `model.safetensors` with every tensor in its original
//!   dtype (merged ones computed in f32 and cast back) and the folder's other files (config, tokenizer)
//!   copied; or a GGUF file, converted as llama.cpp's `convert_hf_to_gguf.py` does ([`merge_hf_to_gguf`]).
//! - A GGUF base also gives a Hugging Face folder ([`merge_gguf_to_hf`]): tensors dequantized to one float type
//!   under Hugging Face's names, config, generation config and tokenizer files written from the metadata.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use baimo_formats::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use baimo_formats::safetensors::{Dtype, SafeTensorsFiles};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::config::{ModelConfig, RopeStyle};
use crate::lora::{permute_rows_for_interleaved_rope, LoraAdapter, LoraDelta, PROJECTIONS};
use crate::weights::{ggml_to_candle, gguf_to_hf_name, WeightSource};
use crate::{ModelError, Result};

pub use crate::gguf_hf::{merge_gguf_to_hf, parse_hf_dtype};
pub use crate::hf_gguf::merge_hf_to_gguf;

/// The type of the matrices in a merged GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    /// Every tensor keeps its type (merged ones are re-quantized to it).
    Keep,
    /// Every 2-D weight in this type (1-D tensors such as norms stay as they are).
    All(GgmlType),
}

impl std::str::FromStr for OutType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<OutType, String> {
        if s.eq_ignore_ascii_case("keep") {
            return Ok(OutType::Keep);
        }
        let t = GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .filter(|t| WRITABLE.contains(t))
            .ok_or_else(|| {
                let names: Vec<&str> = WRITABLE.iter().map(|t| t.name()).collect();
                format!(
                    "unknown output type `{s}` (keep, {})",
                    names.join(", ").to_lowercase()
                )
            })?;
        Ok(OutType::All(t))
    }
}

/// Types a merged matrix can be written in.
const WRITABLE: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// What a merge did.
#[derive(Debug, Default)]
pub struct MergeReport {
    /// Modules whose weight took the adapter's update.
    pub merged: usize,
    /// Tensors written.
    pub tensors: usize,
    /// (tensor, asked type, written type) where rows are not whole blocks of the asked type.
    pub fallbacks: Vec<(String, GgmlType, GgmlType)>,
}

/// `model.layers.3.self_attn.q_proj` for `blk.3.attn_q.weight` (the seven LoRA targets only).
fn gguf_module(name: &str) -> Option<String> {
    let hf = gguf_to_hf_name(name)?;
    let module = hf.strip_suffix(".weight")?;
    PROJECTIONS
        .iter()
        .any(|p| module.ends_with(p))
        .then(|| module.to_string())
}

/// `W + scale · B A` in f32; `heads` permutes B's rows into llama.cpp's rope order first.
pub(crate) fn merged(
    name: &str,
    w: &Tensor,
    d: &LoraDelta,
    heads: Option<usize>,
) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let (r, a_in) = d.a.dims2()?;
    let (b_out, b_r) = d.b.dims2()?;
    if a_in != inp || b_out != out || b_r != r {
        return Err(ModelError::BadShape {
            name: format!("{name} + adapter (A {r}×{a_in}, B {b_out}×{b_r})"),
            expected: vec![out, inp],
            actual: vec![b_out, a_in],
        });
    }
    let b = match heads {
        Some(h) => permute_rows_for_interleaved_rope(&d.b, h)?,
        None => d.b.clone(),
    };
    let ba = b.to_dtype(DType::F32)?.matmul(&d.a.to_dtype(DType::F32)?)?;
    Ok((w.to_dtype(DType::F32)? + (ba * d.scale)?)?)
}

/// The bytes of `t` (rows × cols, f32) in `ty`, or in a fallback type when rows are not whole blocks of it
/// (Q8_0, else F16), as llama.cpp's quantizer does for such tensors.
pub(crate) fn encode(t: &Tensor, ty: GgmlType) -> Result<(GgmlType, Vec<u8>)> {
    let cols = t.dim(1)?;
    let ty = if cols % ty.block_size() == 0 {
        ty
    } else if cols % GgmlType::Q8_0.block_size() == 0 {
        GgmlType::Q8_0
    } else {
        GgmlType::F16
    };
    let bytes = match ty {
        GgmlType::F32 => float_bytes(t, f32::to_le_bytes)?,
        GgmlType::F16 => float_bytes(t, half::f16::to_le_bytes)?,
        GgmlType::BF16 => float_bytes(t, half::bf16::to_le_bytes)?,
        q => {
            let dt = ggml_to_candle(q).ok_or_else(|| ModelError::UnsupportedTensorType {
                name: "merge output".into(),
                dtype: q.name().into(),
            })?;
            QTensor::quantize(&t.to_dtype(DType::F32)?, dt)?
                .data()?
                .into_owned()
        }
    };
    Ok((ty, bytes))
}

/// `t`'s values as `T`, little-endian.
pub(crate) fn float_bytes<T: candle_core::WithDType, const N: usize>(
    t: &Tensor,
    le: fn(T) -> [u8; N],
) -> Result<Vec<u8>> {
    let v = t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?;
    Ok(v.into_iter().flat_map(le).collect())
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) for a file whose matrices are all `ty`.
pub(crate) fn file_type(ty: GgmlType) -> Option<u32> {
    Some(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2K => 10,
        GgmlType::Q3K => 11,
        GgmlType::Q4K => 14,
        GgmlType::Q5K => 16,
        GgmlType::Q6K => 18,
        GgmlType::BF16 => 32,
        _ => return None,
    })
}

/// Writes `dest/model.safetensors`, readable as the folder is (the safetensors crate writes through a temporary
/// file, which is private to its owner: 0600).
pub(crate) fn save_safetensors(tensors: &HashMap<String, Tensor>, dest: &Path) -> Result<()> {
    let st = dest.join("model.safetensors");
    candle_core::safetensors::save(tensors, &st)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| ModelError::Io {
            path: st.display().to_string(),
            source,
        };
        let dir_mode = std::fs::metadata(dest).map_err(io)?.permissions().mode();
        std::fs::set_permissions(&st, std::fs::Permissions::from_mode(dir_mode & 0o666))
            .map_err(io)?;
    }
    Ok(())
}

/// Errors unless every module of the adapter was merged.
pub(crate) fn check_all_used(adapter: &LoraAdapter, used: &HashSet<String>) -> Result<()> {
    let mut left: Vec<&str> = adapter.modules().filter(|m| !used.contains(*m)).collect();
    if left.is_empty() {
        return Ok(());
    }
    left.sort();
    Err(ModelError::BadConfig(format!(
        "{}: {} of the adapter's modules are not projections of this model (e.g. {:?}); is it for another base?",
        adapter.path.display(),
        left.len(),
        &left[..left.len().min(3)]
    )))
}

/// Merges `adapter` into the GGUF `base` and writes the result to `dest`.
pub fn merge_gguf(
    base: &GgufFile,
    adapter: &LoraAdapter,
    out: OutType,
    dest: &Path,
) -> Result<MergeReport> {
    let cfg = ModelConfig::from_gguf(base)?;
    let interleaved = cfg.rope_style == RopeStyle::Interleaved;
    let mut w = GgufWriter::new();
    for (k, v) in &base.metadata {
        w.add_kv(k, v.clone());
    }
    if let OutType::All(ty) = out {
        if let Some(ft) = file_type(ty) {
            w.add_kv("general.file_type", Value::U32(ft));
        }
    }
    let mut report = MergeReport::default();
    let mut used = HashSet::new();
    for info in &base.tensors {
        let module = gguf_module(&info.name);
        let delta = module.as_deref().and_then(|m| adapter.delta(m));
        let matrix = info.dims.len() == 2;
        let target = match out {
            OutType::All(ty) if matrix => ty,
            _ => info.dtype,
        };
        if delta.is_none() && target == info.dtype {
            w.add_tensor(
                &info.name,
                info.dtype,
                &info.dims,
                base.tensor_data(info).to_vec(),
            )?;
            report.tensors += 1;
            continue;
        }
        let t = WeightSource::require(base, &info.name)?.into_f32()?;
        let t = match (delta, module) {
            (Some(d), Some(m)) => {
                let heads = if !interleaved {
                    None
                } else if m.ends_with("q_proj") {
                    Some(cfg.num_attention_heads)
                } else if m.ends_with("k_proj") {
                    Some(cfg.num_key_value_heads)
                } else {
                    None
                };
                report.merged += 1;
                used.insert(m);
                merged(&info.name, &t, d, heads)?
            }
            _ => t,
        };
        let (written, bytes) = encode(&t, target)?;
        if written != target {
            report.fallbacks.push((info.name.clone(), target, written));
        }
        w.add_tensor(&info.name, written, &info.dims, bytes)?;
        report.tensors += 1;
    }
    check_all_used(adapter, &used)?;
    w.write_to_path(dest)?;
    Ok(report)
}

/// Merges `adapter` into the Hugging Face folder `base` and writes a folder `dest` (created if needed):
/// `model.safetensors` plus copies of the base folder's other files.
pub fn merge_hf_dir(base: &Path, adapter: &LoraAdapter, dest: &Path) -> Result<MergeReport> {
    let files = SafeTensorsFiles::open(base)?;
    let io = |path: &Path, source: std::io::Error| ModelError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dest).map_err(|e| io(dest, e))?;
    let mut report = MergeReport::default();
    let mut used = HashSet::new();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for name in files.names() {
        let view = files
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
        let dtype = match view.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(ModelError::UnsupportedTensorType {
                    name: name.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(view.data, dtype, &view.shape, &Device::Cpu)?;
        let module = name.strip_suffix(".weight");
        let t = match module.and_then(|m| adapter.delta(m).map(|d| (m, d))) {
            Some((m, d)) => {
                report.merged += 1;
                used.insert(m.to_string());
                merged(name, &t, d, None)?.to_dtype(dtype)?
            }
            None => t,
        };
        out.insert(name.clone(), t);
        report.tensors += 1;
    }
    check_all_used(adapter, &used)?;
    save_safetensors(&out, dest)?;
    let entries = std::fs::read_dir(base).map_err(|e| io(base, e))?;
    for e in entries {
        let p = e.map_err(|e| io(base, e))?.path();
        let Some(fname) = p.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let weights = fname.ends_with(".safetensors") || fname == "model.safetensors.index.json";
        if p.is_file() && !weights {
            std::fs::copy(&p, dest.join(fname)).map_err(|e| io(&p, e))?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_module_paths() {
        assert_eq!(
            gguf_module("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj")
        );
        assert_eq!(
            gguf_module("blk.0.ffn_down.weight").as_deref(),
            Some("model.layers.0.mlp.down_proj")
        );
        assert_eq!(gguf_module("blk.0.attn_q.bias"), None);
        assert_eq!(gguf_module("blk.x.attn_q.weight"), None);
        assert_eq!(gguf_module("token_embd.weight"), None);
    }

    #[test]
    fn output_types_parse() {
        assert_eq!("keep".parse::<OutType>(), Ok(OutType::Keep));
        assert_eq!("q4_k".parse::<OutType>(), Ok(OutType::All(GgmlType::Q4K)));
        assert_eq!("F16".parse::<OutType>(), Ok(OutType::All(GgmlType::F16)));
        let e = "q9".parse::<OutType>().unwrap_err();
        assert!(e.contains("q8_0") && e.contains("keep"), "{e}");
    }

    #[test]
    fn rows_that_are_not_whole_blocks_fall_back() {
        let t = Tensor::ones((2, 96), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(encode(&t, GgmlType::Q4K).unwrap().0, GgmlType::Q8_0);
        let t = Tensor::ones((2, 20), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(encode(&t, GgmlType::Q4_0).unwrap().0, GgmlType::F16);
        let (ty, bytes) = encode(
            &Tensor::ones((2, 32), DType::F32, &Device::Cpu).unwrap(),
            GgmlType::Q8_0,
        )
        .unwrap();
        assert_eq!((ty, bytes.len()), (GgmlType::Q8_0, 2 * 34));
    }
}
