//! Building blocks of the decoder. Model code never branches on the tensor type: [`Linear`] hides whether
//! its weight is quantized (our `baimo-kernels`, activations quantized to Q8 blocks as ggml does, weights
//! read in place from the file's memory map) or float (candle).

use baimo_formats::SharedBytes;
use baimo_kernels::{dequantize_row, quant_matmul, BlockFormat};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor, D};

use crate::weights::{Weight, WeightSource};
use crate::{ModelError, Result};

/// How a linear layer's weight is stored and multiplied.
enum LinearWeight {
    /// Float weights (and any quantized type our kernels lack) through candle's `QMatMul`.
    Candle(QMatMul),
    /// GGUF block formats, multiplied in place by our kernels with ggml-identical activation quantization.
    Blocks {
        format: BlockFormat,
        data: SharedBytes,
    },
}

/// `y = x Wᵀ + b` with W of shape (out, in).
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let w = src.require(&name)?;
        check_shape(&name, &w.dims(), &[out, inp])?;
        let weight = match w {
            Weight::Blocks { format, data, .. } => LinearWeight::Blocks { format, data },
            Weight::Quant(q) => LinearWeight::Candle(QMatMul::from_arc(std::sync::Arc::new(q))?),
            Weight::Float(t) => LinearWeight::Candle(QMatMul::Tensor(t)),
        };
        let bias = if bias {
            Some(load_vector(src, &format!("{prefix}.bias"), out)?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            out_features: out,
            in_features: inp,
        })
    }

    /// `x`: (tokens, in) → (tokens, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Candle(w) => w.forward(x)?,
            LinearWeight::Blocks { format, data } => {
                let n = x.dim(0)?;
                let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let y = quant_matmul(*format, data, self.out_features, self.in_features, &xs)
                    .map_err(|e| ModelError::Kernel(e.to_string()))?;
                Tensor::from_vec(y, (n, self.out_features), x.device())?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }
    pub fn in_features(&self) -> usize {
        self.in_features
    }
}

fn check_shape(name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    if actual != expected {
        return Err(ModelError::BadShape {
            name: name.into(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

/// A 1-D float weight (norm scale, bias).
pub fn load_vector(src: &dyn WeightSource, name: &str, len: usize) -> Result<Tensor> {
    let t = src.require(name)?.into_f32()?;
    let t = t.flatten_all()?;
    check_shape(name, t.dims(), &[len])?;
    Ok(t)
}

/// Root-mean-square layer norm (Zhang & Sennrich 2019), computed in f32 like HF `LlamaRMSNorm`.
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(src: &dyn WeightSource, name: &str, len: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: load_vector(src, name, len)?,
            eps,
        })
    }
    /// Normalizes over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        Ok(x.broadcast_mul(&self.weight)?)
    }
}

/// Token embedding table; stays quantized when the file stores it quantized (rows dequantized on lookup,
/// as ggml's `get_rows` does).
pub enum Embedding {
    Blocks {
        format: BlockFormat,
        data: SharedBytes,
        vocab: usize,
        hidden: usize,
    },
    Quant(std::sync::Arc<QTensor>),
    Float(Tensor),
}

impl Embedding {
    pub fn load(
        src: &dyn WeightSource,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Embedding> {
        let w = src.require(name)?;
        check_shape(name, &w.dims(), &[vocab, hidden])?;
        Ok(match w {
            Weight::Blocks { format, data, .. } => Embedding::Blocks {
                format,
                data,
                vocab,
                hidden,
            },
            Weight::Quant(q) => Embedding::Quant(std::sync::Arc::new(q)),
            Weight::Float(t) => Embedding::Float(t),
        })
    }
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embedding::Blocks {
                format,
                data,
                vocab,
                hidden,
            } => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let row_bytes = data.len() / vocab;
                let mut v = Vec::with_capacity(ids.len() * hidden);
                for &id in &ids {
                    let id = id as usize;
                    if id >= *vocab {
                        return Err(ModelError::Kernel(format!(
                            "token id {id} outside the embedding table of {vocab}"
                        )));
                    }
                    v.extend(dequantize_row(
                        *format,
                        &data[id * row_bytes..(id + 1) * row_bytes],
                    ));
                }
                Tensor::from_vec(v, (ids.len(), *hidden), &Device::Cpu)?
            }
            Embedding::Quant(q) => q.embedding(ids)?,
            Embedding::Float(t) => t.index_select(ids, 0)?,
        })
    }
    /// The same table as an output projection (tied embeddings).
    pub fn as_linear(&self) -> Result<Linear> {
        Ok(match self {
            Embedding::Blocks {
                format,
                data,
                vocab,
                hidden,
            } => Linear {
                weight: LinearWeight::Blocks {
                    format: *format,
                    data: data.clone(),
                },
                bias: None,
                out_features: *vocab,
                in_features: *hidden,
            },
            Embedding::Quant(q) => {
                let (v, h) = q.shape().dims2()?;
                Linear {
                    weight: LinearWeight::Candle(QMatMul::from_arc(q.clone())?),
                    bias: None,
                    out_features: v,
                    in_features: h,
                }
            }
            Embedding::Float(t) => {
                let (v, h) = t.dims2()?;
                Linear {
                    weight: LinearWeight::Candle(QMatMul::Tensor(t.clone())),
                    bias: None,
                    out_features: v,
                    in_features: h,
                }
            }
        })
    }
}

/// Rotary position embedding (Su et al. 2021) with cos/sin tables computed for each call's positions.
pub struct Rope {
    inv_freq: Vec<f32>,
    style: crate::RopeStyle,
}

impl Rope {
    pub fn new(inv_freq: Vec<f32>, style: crate::RopeStyle) -> Rope {
        Rope { inv_freq, style }
    }

    /// cos and sin tables of shape (seq, head_dim/2) for absolute positions `start..start+seq`.
    pub fn tables(&self, start: usize, seq: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in start..start + seq {
            for &f in &self.inv_freq {
                // HF computes `position * inv_freq` in f32, then cos/sin.
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (seq, half), &Device::Cpu)?;
        let sin = Tensor::from_vec(sin, (seq, half), &Device::Cpu)?;
        Ok((cos, sin))
    }

    /// `x`: (heads, seq, head_dim).
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (heads, seq, d) = x.dims3()?;
        let half = d / 2;
        match self.style {
            crate::RopeStyle::Half => {
                let x1 = x.narrow(D::Minus1, 0, half)?;
                let x2 = x.narrow(D::Minus1, half, half)?;
                let o1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
                let o2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
                Ok(Tensor::cat(&[o1, o2], D::Minus1)?)
            }
            crate::RopeStyle::Interleaved => {
                let xr = x.reshape((heads, seq, half, 2))?;
                let xe = xr.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
                let xo = xr.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
                let oe = (xe.broadcast_mul(cos)? - xo.broadcast_mul(sin)?)?;
                let oo = (xe.broadcast_mul(sin)? + xo.broadcast_mul(cos)?)?;
                Ok(Tensor::stack(&[oe, oo], D::Minus1)?.reshape((heads, seq, d))?)
            }
        }
    }
}

/// Softmax over the last dimension, max-subtracted.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}
