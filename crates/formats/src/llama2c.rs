//! llama2.c checkpoints (the legacy "version 0" `.bin` export) and tokenizer files.
//!
//! Layout as read by `memory_map_weights` in karpathy/llama2.c `run.c`: a header of 7 × i32
//! (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size
//! means the classifier is not shared with the embedding), then f32 arrays back to back:
//! token embedding (vocab, dim), rms_att (L, dim), wq (L, dim, dim), wk (L, kv_dim, dim),
//! wv (L, kv_dim, dim), wo (L, dim, dim), rms_ffn (L, dim), w1 (L, hidden, dim),
//! w2 (L, dim, hidden), w3 (L, hidden, dim), rms_final (dim), the legacy RoPE tables
//! freq_cis_real and freq_cis_imag (seq_len × head_size/2 each, skipped), then the classifier
//! (vocab, dim) only when unshared. Matrices are row-major (out, in), like PyTorch.
//!
//! Tensors are exposed under Hugging Face Llama names. Q and K keep llama2.c's interleaved RoPE
//! pairs (no permutation); the models crate picks the rope style.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::mmap::Bytes;
use crate::{FormatError, Result};

const HEADER_LEN: u64 = 7 * 4;

/// The checkpoint header, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Llama2cConfig {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Always positive here; the sign in the file becomes `shared_classifier`.
    pub vocab_size: usize,
    pub seq_len: usize,
    /// True when the file's vocab_size was positive: `lm_head` is the embedding matrix.
    pub shared_classifier: bool,
}

impl Llama2cConfig {
    /// Reads and validates the 28-byte header.
    pub fn from_header(bytes: &[u8]) -> Result<Llama2cConfig> {
        let have = bytes.len() as u64;
        let Some(h) = bytes.get(..HEADER_LEN as usize) else {
            return Err(FormatError::Truncated {
                what: "llama2.c header".into(),
                offset: 0,
                need: HEADER_LEN,
                have,
            });
        };
        let mut v = [0i32; 7];
        for (i, c) in h.chunks_exact(4).enumerate() {
            v[i] = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len] = v;
        let bad = |reason: String| FormatError::BadLlama2c { reason };
        let names = [
            "dim",
            "hidden_dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "vocab_size",
            "seq_len",
        ];
        for (name, x) in names.iter().zip(v) {
            if x == 0 || (x < 0 && *name != "vocab_size") || x == i32::MIN {
                return Err(bad(format!(
                    "{name} is {x}, must be positive (header {v:?})"
                )));
            }
        }
        let c = Llama2cConfig {
            dim: dim as usize,
            hidden_dim: hidden_dim as usize,
            n_layers: n_layers as usize,
            n_heads: n_heads as usize,
            n_kv_heads: n_kv_heads as usize,
            vocab_size: vocab.unsigned_abs() as usize,
            seq_len: seq_len as usize,
            shared_classifier: vocab > 0,
        };
        if !c.dim.is_multiple_of(c.n_heads) {
            return Err(bad(format!(
                "n_heads {} does not divide dim {}",
                c.n_heads, c.dim
            )));
        }
        if c.n_kv_heads > c.n_heads || !c.n_heads.is_multiple_of(c.n_kv_heads) {
            return Err(bad(format!(
                "n_kv_heads {} does not divide n_heads {}",
                c.n_kv_heads, c.n_heads
            )));
        }
        if !c.head_size().is_multiple_of(2) {
            return Err(bad(format!(
                "head size {} is odd; RoPE needs pairs",
                c.head_size()
            )));
        }
        Ok(c)
    }

    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size()
    }

    /// The exact file size this header implies, or an error if it overflows.
    pub fn expected_file_len(&self) -> Result<u64> {
        self.layout()?.iter().try_fold(HEADER_LEN, |total, a| {
            total.checked_add(a.bytes).ok_or_else(overflow)
        })
    }

    /// The f32 arrays in file order, sizes checked for overflow.
    fn layout(&self) -> Result<Vec<Array>> {
        let (d, h, l, kv) = (self.dim, self.hidden_dim, self.n_layers, self.kv_dim());
        let rope = self.seq_len * (self.head_size() / 2);
        let mut out = vec![
            ("token_embedding_table", vec![self.vocab_size, d], 1),
            ("rms_att_weight", vec![d], l),
            ("wq", vec![d, d], l),
            ("wk", vec![kv, d], l),
            ("wv", vec![kv, d], l),
            ("wo", vec![d, d], l),
            ("rms_ffn_weight", vec![d], l),
            ("w1", vec![h, d], l),
            ("w2", vec![d, h], l),
            ("w3", vec![h, d], l),
            ("rms_final_weight", vec![d], 1),
            ("freq_cis_real", vec![rope], 1),
            ("freq_cis_imag", vec![rope], 1),
        ];
        if !self.shared_classifier {
            out.push(("wcls", vec![self.vocab_size, d], 1));
        }
        out.into_iter()
            .map(|(name, shape, items)| {
                let item_bytes = shape
                    .iter()
                    .try_fold(4u64, |n, &x| n.checked_mul(x as u64))
                    .ok_or_else(overflow)?;
                let bytes = item_bytes.checked_mul(items as u64).ok_or_else(overflow)?;
                Ok(Array {
                    name,
                    shape,
                    items,
                    item_bytes,
                    bytes,
                })
            })
            .collect()
    }
}

/// One llama2.c array: `items` copies (one per layer, or 1) of an f32 tensor of `shape`.
struct Array {
    name: &'static str,
    shape: Vec<usize>,
    items: usize,
    item_bytes: u64,
    bytes: u64,
}

fn overflow() -> FormatError {
    FormatError::BadLlama2c {
        reason: "header sizes overflow the file size".into(),
    }
}

/// Hugging Face name of llama2.c array `name`, layer `i`.
fn hf_name(name: &str, i: usize) -> Option<String> {
    let layer = |s: &str| Some(format!("model.layers.{i}.{s}"));
    match name {
        "token_embedding_table" => Some("model.embed_tokens.weight".into()),
        "rms_att_weight" => layer("input_layernorm.weight"),
        "wq" => layer("self_attn.q_proj.weight"),
        "wk" => layer("self_attn.k_proj.weight"),
        "wv" => layer("self_attn.v_proj.weight"),
        "wo" => layer("self_attn.o_proj.weight"),
        "rms_ffn_weight" => layer("post_attention_layernorm.weight"),
        "w1" => layer("mlp.gate_proj.weight"),
        "w2" => layer("mlp.down_proj.weight"),
        "w3" => layer("mlp.up_proj.weight"),
        "rms_final_weight" => Some("model.norm.weight".into()),
        "wcls" => Some("lm_head.weight".into()),
        _ => None,
    }
}

/// One tensor: its f32 little-endian bytes (a slice of the file) and its HF shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama2cTensor<'a> {
    pub data: &'a [u8],
    /// `[rows, cols]` (out, in) for matrices, `[dim]` for norm weights.
    pub shape: Vec<usize>,
}

impl<'a> Llama2cTensor<'a> {
    /// The values in place, when the bytes are 4-aligned in memory (always for a memory-mapped
    /// file: the header is 28 bytes and arrays are f32) on a little-endian target.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        if cfg!(target_endian = "big") {
            return None;
        }
        // SAFETY: every bit pattern is a valid f32; `align_to` only yields aligned elements,
        // and we reject any unaligned head or partial tail.
        let (head, floats, tail) = unsafe { self.data.align_to::<f32>() };
        (head.is_empty() && tail.is_empty()).then_some(floats)
    }

    /// The values, decoded (works whatever the alignment).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// A memory-mapped llama2.c checkpoint.
#[derive(Debug)]
pub struct Llama2cCheckpoint {
    pub config: Llama2cConfig,
    bytes: Bytes,
    path: Option<PathBuf>,
    /// HF name to (byte offset, shape), in file order.
    tensors: Vec<(String, u64, Vec<usize>)>,
    by_name: HashMap<String, usize>,
}

impl Llama2cCheckpoint {
    /// Memory-maps and validates `path` (header, and file size exactly as the header implies).
    pub fn open(path: impl AsRef<Path>) -> Result<Llama2cCheckpoint> {
        let path = path.as_ref();
        let bytes = Bytes::map(path)?;
        let mut c = Llama2cCheckpoint::build(bytes).map_err(|e| e.in_file(path))?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses a checkpoint held in memory (tests, fuzzing).
    pub fn from_vec(bytes: Vec<u8>) -> Result<Llama2cCheckpoint> {
        Llama2cCheckpoint::build(Bytes::Owned(bytes))
    }

    fn build(bytes: Bytes) -> Result<Llama2cCheckpoint> {
        let config = Llama2cConfig::from_header(bytes.as_slice())?;
        let layout = config.layout()?;
        let expected = config.expected_file_len()?;
        let actual = bytes.as_slice().len() as u64;
        if expected != actual {
            let c = &config;
            let detail = format!(
                "dim {} hidden {} layers {} heads {}/{} vocab {} seq_len {} {} classifier",
                c.dim,
                c.hidden_dim,
                c.n_layers,
                c.n_heads,
                c.n_kv_heads,
                c.vocab_size,
                c.seq_len,
                if c.shared_classifier {
                    "shared"
                } else {
                    "separate"
                }
            );
            return Err(FormatError::Llama2cSize {
                expected,
                actual,
                detail,
            });
        }
        // Every offset below is < expected == file length, so nothing overflows from here on.
        let mut tensors = Vec::new();
        let mut offset = HEADER_LEN;
        for a in layout {
            for i in 0..a.items {
                if let Some(hf) = hf_name(a.name, i) {
                    tensors.push((hf, offset + i as u64 * a.item_bytes, a.shape.clone()));
                }
            }
            offset += a.bytes;
        }
        if config.shared_classifier {
            tensors.push((
                "lm_head.weight".into(),
                HEADER_LEN,
                vec![config.vocab_size, config.dim],
            ));
        }
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.0.clone(), i))
            .collect();
        Ok(Llama2cCheckpoint {
            config,
            bytes,
            path: None,
            tensors,
            by_name,
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// HF names of all tensors, in file order (`lm_head.weight` last).
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.0.as_str())
    }

    /// Tensor `hf_name` (e.g. "model.layers.3.mlp.gate_proj.weight"), zero-copy.
    pub fn tensor(&self, hf_name: &str) -> Option<Llama2cTensor<'_>> {
        let (_, offset, shape) = self.tensors.get(*self.by_name.get(hf_name)?)?;
        let start = usize::try_from(*offset).ok()?;
        let len = shape.iter().product::<usize>().checked_mul(4)?;
        let data = self.bytes.as_slice().get(start..start.checked_add(len)?)?;
        Some(Llama2cTensor {
            data,
            shape: shape.clone(),
        })
    }
}

/// A llama2.c tokenizer file (`tokenizer.bin`, `tok512.bin`), as read by `build_tokenizer` in
/// run.c. The token count is not stored; it comes from the checkpoint header.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama2cVocab {
    pub max_token_length: u32,
    /// (raw bytes, merge score) per token id.
    pub tokens: Vec<(Vec<u8>, f32)>,
}

/// Reads `vocab_size` tokens from a llama2.c tokenizer file.
pub fn read_vocab(path: impl AsRef<Path>, vocab_size: usize) -> Result<Llama2cVocab> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    parse_vocab(&bytes, vocab_size).map_err(|e| e.in_file(path))
}

/// [`read_vocab`] on bytes in memory. Like run.c, bytes after the last requested token are
/// ignored.
pub fn parse_vocab(bytes: &[u8], vocab_size: usize) -> Result<Llama2cVocab> {
    let bad = |reason: String| FormatError::BadVocab { reason };
    let mut pos = 0usize;
    let read4 = |what: &dyn Fn() -> String, pos: &mut usize| -> Result<[u8; 4]> {
        let have = (bytes.len() - *pos) as u64;
        let b = bytes
            .get(*pos..*pos + 4)
            .ok_or_else(|| FormatError::Truncated {
                what: what(),
                offset: *pos as u64,
                need: 4,
                have,
            })?;
        *pos += 4;
        Ok([b[0], b[1], b[2], b[3]])
    };
    let max_len = i32::from_le_bytes(read4(&|| "max_token_length".into(), &mut pos)?);
    let max_token_length =
        u32::try_from(max_len).map_err(|_| bad(format!("max_token_length is {max_len}")))?;
    // Each record takes at least 8 bytes (score + length); bound before allocating.
    let fit = (bytes.len() - pos) / 8;
    if vocab_size > fit {
        return Err(bad(format!(
            "{vocab_size} tokens cannot fit in {} bytes",
            bytes.len()
        )));
    }
    let mut tokens = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size {
        let score = f32::from_le_bytes(read4(&|| format!("score of token {i}"), &mut pos)?);
        let len = i32::from_le_bytes(read4(&|| format!("length of token {i}"), &mut pos)?);
        let len = usize::try_from(len).map_err(|_| bad(format!("token {i} has length {len}")))?;
        let have = (bytes.len() - pos) as u64;
        let raw =
            bytes
                .get(pos..pos.saturating_add(len))
                .ok_or_else(|| FormatError::Truncated {
                    what: format!("bytes of token {i}"),
                    offset: pos as u64,
                    need: len as u64,
                    have,
                })?;
        pos += len;
        tokens.push((raw.to_vec(), score));
    }
    Ok(Llama2cVocab {
        max_token_length,
        tokens,
    })
}

#[cfg(test)]
mod tests;
