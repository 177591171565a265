//! Where weights come from. The decoder asks for tensors by their Hugging Face names
//! (`model.layers.3.self_attn.q_proj.weight`); each source maps those names onto its own file layout,
//! the way llama.cpp's tensor-name tables do (`blk.3.attn_q.weight` in GGUF).

use baimo_formats::gguf::{GgmlType, GgufFile};
use baimo_formats::llama2c::Llama2cCheckpoint;
use baimo_formats::safetensors::SafeTensorsFiles;
use baimo_formats::SharedBytes;
use baimo_kernels::{dequantize_row, float_weights_in_place, BlockFormat, FloatFormat};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

/// Which kind of file a model was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    Safetensors,
    Llama2c,
}

/// One weight as stored: quantized blocks, or a float tensor (always converted to f32 for compute).
pub enum Weight {
    /// A block format our kernels multiply, served from the file's memory map (no copy).
    Blocks {
        format: BlockFormat,
        /// (rows, cols).
        dims: [usize; 2],
        data: SharedBytes,
    },
    /// A float matrix (F32, F16, BF16) our float kernel multiplies in place from the memory map (on CPUs
    /// where that kernel is fast; elsewhere float weights are [`Weight::Float`]).
    FloatRows {
        format: FloatFormat,
        /// (rows, cols).
        dims: [usize; 2],
        data: SharedBytes,
    },
    /// Any other quantized type, through candle (none that GGUF files use today).
    Quant(QTensor),
    Float(Tensor),
}

impl Weight {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Blocks { dims, .. } | Weight::FloatRows { dims, .. } => dims.to_vec(),
            Weight::Quant(q) => q.shape().dims().to_vec(),
            Weight::Float(t) => t.dims().to_vec(),
        }
    }
    /// A float tensor, dequantizing if needed (norm weights, biases).
    pub fn into_f32(self) -> Result<Tensor> {
        Ok(match self {
            Weight::Blocks { format, dims, data } => {
                let row_bytes = data.len() / dims[0].max(1);
                let v: Vec<f32> = data
                    .chunks_exact(row_bytes.max(1))
                    .flat_map(|r| dequantize_row(format, r))
                    .collect();
                Tensor::from_vec(v, (dims[0], dims[1]), &Device::Cpu)?
            }
            Weight::FloatRows { format, dims, data } => {
                Tensor::from_vec(format.row_values(&data), (dims[0], dims[1]), &Device::Cpu)?
            }
            Weight::Quant(q) => q.dequantize(&Device::Cpu)?,
            Weight::Float(t) => t,
        })
    }
}

/// The GGUF types our kernels multiply.
pub fn block_format(t: GgmlType) -> Option<BlockFormat> {
    Some(match t {
        GgmlType::Q4_0 => BlockFormat::Q4_0,
        GgmlType::Q4_1 => BlockFormat::Q4_1,
        GgmlType::Q5_0 => BlockFormat::Q5_0,
        GgmlType::Q5_1 => BlockFormat::Q5_1,
        GgmlType::Q8_0 => BlockFormat::Q8_0,
        GgmlType::Q2K => BlockFormat::Q2K,
        GgmlType::Q3K => BlockFormat::Q3K,
        GgmlType::Q4K => BlockFormat::Q4K,
        GgmlType::Q5K => BlockFormat::Q5K,
        GgmlType::Q6K => BlockFormat::Q6K,
        _ => return None,
    })
}

/// Summary of one stored tensor, for `baimo info`.
#[derive(Debug, Clone)]
pub struct WeightInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

pub trait WeightSource {
    /// The tensor stored under the Hugging Face name `name`, or `None` when the file has no such tensor.
    fn get(&self, name: &str) -> Result<Option<Weight>>;
    fn format(&self) -> ModelFormat;

    fn require(&self, name: &str) -> Result<Weight> {
        self.get(name)?
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }
}

/// Whole-model tensors: Hugging Face name, llama.cpp GGUF name (llama.cpp `LLM_TENSOR_NAMES`).
const MODEL_TENSORS: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Per-layer modules: Hugging Face path under `model.layers.N.`, llama.cpp's name under `blk.N.`.
const LAYER_MODULES: [(&str, &str); 11] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Hugging Face name → llama.cpp GGUF name (`model.layers.3.self_attn.q_proj.bias` → `blk.3.attn_q.bias`).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    if let Some((_, g)) = MODEL_TENSORS.iter().find(|(hf, _)| *hf == name) {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (_, short) = LAYER_MODULES.iter().find(|(hf, _)| *hf == module)?;
    Some(format!("blk.{layer}.{short}.{suffix}"))
}

/// llama.cpp GGUF name → Hugging Face name: the inverse of [`hf_to_gguf_name`].
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    if let Some((hf, _)) = MODEL_TENSORS.iter().find(|(_, g)| *g == name) {
        return Some(hf.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (short, suffix) = rest.rsplit_once('.')?;
    let (module, _) = LAYER_MODULES.iter().find(|(_, g)| *g == short)?;
    Some(format!("model.layers.{layer}.{module}.{suffix}"))
}

pub fn ggml_to_candle(t: GgmlType) -> Option<GgmlDType> {
    Some(match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q8_1 => GgmlDType::Q8_1,
        GgmlType::Q2K => GgmlDType::Q2K,
        GgmlType::Q3K => GgmlDType::Q3K,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        GgmlType::Q8K => GgmlDType::Q8K,
        _ => return None,
    })
}

impl WeightSource for GgufFile {
    fn get(&self, name: &str) -> Result<Option<Weight>> {
        let gguf_name = hf_to_gguf_name(name).unwrap_or_else(|| name.to_string());
        let Some(info) = self.tensor(&gguf_name) else {
            return Ok(None);
        };
        let dtype =
            ggml_to_candle(info.dtype).ok_or_else(|| ModelError::UnsupportedTensorType {
                name: gguf_name.clone(),
                dtype: info.dtype.name().to_string(),
            })?;
        // ggml lists dims innermost first; candle wants (rows, cols).
        let dims: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        if let Some(format) = block_format(info.dtype) {
            let cols = info.dims.first().copied().unwrap_or(1) as usize;
            let rows = info.dims.iter().skip(1).product::<u64>() as usize;
            if cols.checked_rem(format.block_len()) == Some(0) {
                return Ok(Some(Weight::Blocks {
                    format,
                    dims: [rows, cols],
                    data: self.tensor_shared(info),
                }));
            }
        }
        let float = match info.dtype {
            GgmlType::F32 => Some(FloatFormat::F32),
            GgmlType::F16 => Some(FloatFormat::F16),
            GgmlType::BF16 => Some(FloatFormat::BF16),
            _ => None,
        };
        if let (Some(format), [rows, cols]) = (float, dims.as_slice()) {
            if float_weights_in_place() {
                return Ok(Some(Weight::FloatRows {
                    format,
                    dims: [*rows, *cols],
                    data: self.tensor_shared(info),
                }));
            }
        }
        let data = self.tensor_data(info);
        let q = qtensor_from_ggml(dtype, data, dims, &Device::Cpu)?;
        Ok(Some(match dtype {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                Weight::Float(q.dequantize(&Device::Cpu)?)
            }
            _ => Weight::Quant(q),
        }))
    }
    fn format(&self) -> ModelFormat {
        ModelFormat::Gguf
    }
}

impl WeightSource for SafeTensorsFiles {
    fn get(&self, name: &str) -> Result<Option<Weight>> {
        let Some(view) = SafeTensorsFiles::get(self, name) else {
            return Ok(None);
        };
        let float = match view.dtype {
            baimo_formats::safetensors::Dtype::F32 => Some(FloatFormat::F32),
            baimo_formats::safetensors::Dtype::F16 => Some(FloatFormat::F16),
            baimo_formats::safetensors::Dtype::BF16 => Some(FloatFormat::BF16),
            _ => None,
        };
        if let (Some(format), [rows, cols]) = (float, view.shape.as_slice()) {
            if float_weights_in_place() {
                if let Some((_, data)) = self.get_shared(name) {
                    return Ok(Some(Weight::FloatRows {
                        format,
                        dims: [*rows, *cols],
                        data,
                    }));
                }
            }
        }
        let dtype = match view.dtype {
            baimo_formats::safetensors::Dtype::F32 => DType::F32,
            baimo_formats::safetensors::Dtype::F16 => DType::F16,
            baimo_formats::safetensors::Dtype::BF16 => DType::BF16,
            other => {
                return Err(ModelError::UnsupportedTensorType {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(view.data, dtype, &view.shape, &Device::Cpu)?
            .to_dtype(DType::F32)?;
        Ok(Some(Weight::Float(t)))
    }
    fn format(&self) -> ModelFormat {
        ModelFormat::Safetensors
    }
}

impl WeightSource for Llama2cCheckpoint {
    fn get(&self, name: &str) -> Result<Option<Weight>> {
        let Some(t) = self.tensor(name) else {
            return Ok(None);
        };
        Ok(Some(Weight::Float(Tensor::from_vec(
            t.to_f32_vec(),
            t.shape.as_slice(),
            &Device::Cpu,
        )?)))
    }
    fn format(&self) -> ModelFormat {
        ModelFormat::Llama2c
    }
}

/// Per-tensor summary of a GGUF file.
pub fn gguf_weight_infos(g: &GgufFile) -> Vec<WeightInfo> {
    g.tensors
        .iter()
        .map(|t| WeightInfo {
            name: t.name.clone(),
            dtype: t.dtype.name().to_string(),
            shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
        })
        .collect()
}

/// Any source with every weight dequantized to f32 on load: a float copy of a quantized model, for training
/// (gradients must flow through the frozen base; the adapter then serves on the quantized file).
pub struct Dequantized<'a>(pub &'a dyn WeightSource);

impl WeightSource for Dequantized<'_> {
    fn get(&self, name: &str) -> Result<Option<Weight>> {
        Ok(match self.0.get(name)? {
            Some(w) => Some(Weight::Float(w.into_f32()?)),
            None => None,
        })
    }
    fn format(&self) -> ModelFormat {
        self.0.format()
    }
}
