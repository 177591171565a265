//! GGUF v2/v3 reader (memory-mapped, zero-copy tensor data) and a small writer.
//!
//! Layout, per the GGUF spec (ggml/docs/gguf.md) and ggml/src/gguf.cpp, all little-endian:
//! magic "GGUF", u32 version, u64 tensor_count, u64 metadata_kv_count, the key-value pairs
//! (key: u64 length + UTF-8; u32 value type; value), the tensor infos (name, u32 n_dims,
//! n_dims x u64 dims, u32 ggml type, u64 offset relative to the data section), padding to
//! `general.alignment` (default 32), then the tensor data. Version 1 (u32 counts) is rejected.

pub mod blocks;
mod parse;
mod types;
mod value;
mod writer;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};

pub use parse::{MAX_DIMS, MAX_NESTING};
pub use types::{ggml_type_name, GgmlType, QK_K};
pub use value::Value;
pub use writer::GgufWriter;

use crate::mmap::{Bytes, SharedBytes};
use crate::Result;

/// `GGUF_DEFAULT_ALIGNMENT` in gguf.h.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) length, so a PyTorch `[out, in]` matrix is
    /// stored as `dims = [in, out]`.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Relative to [`GgufHeader::data_offset`].
    pub offset: u64,
}

impl TensorInfo {
    /// Product of the dims (1 for a scalar). Validated not to overflow for tensors read from a file.
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Bytes of data (`ggml_nbytes` for a contiguous tensor). Validated for tensors read from a file.
    pub fn n_bytes(&self) -> u64 {
        self.dtype.bytes_for(self.n_elements()).unwrap_or(u64::MAX)
    }

    /// Bytes of one row (`dims[0]` elements; `ggml_row_size`).
    pub fn row_bytes(&self) -> u64 {
        self.dtype
            .bytes_for(self.dims.first().copied().unwrap_or(1))
            .unwrap_or(u64::MAX)
    }
}

/// Everything before the tensor data: what [`GgufFile::from_bytes`] returns without keeping the
/// bytes. [`GgufFile`] derefs to it, so `file.metadata`, `file.get_u32(..)` etc. work on both.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section (end of the tensor infos, rounded up to `alignment`).
    pub data_offset: u64,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// Any integer type whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u32()
    }

    /// Any non-negative integer type.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// Any integer type whose value fits in i64.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// f32 or f64 (narrowed), or an integer (converted).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_array(&self, key: &str) -> Option<&[Value]> {
        self.get(key)?.as_array()
    }

    /// `general.architecture`, e.g. "llama", "qwen2".
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `{architecture}.{suffix}`, e.g. `arch_key("context_length")` = "qwen2.context_length".
    pub fn arch_key(&self, suffix: &str) -> Option<String> {
        self.architecture().map(|a| format!("{a}.{suffix}"))
    }
}

/// A parsed GGUF file and its bytes (memory-mapped when opened from a path).
#[derive(Debug)]
pub struct GgufFile {
    header: GgufHeader,
    bytes: std::sync::Arc<Bytes>,
    path: Option<PathBuf>,
    by_name: HashMap<String, usize>,
}

impl Deref for GgufFile {
    type Target = GgufHeader;
    fn deref(&self) -> &GgufHeader {
        &self.header
    }
}

impl GgufFile {
    /// Memory-maps `path` and parses it; every tensor is checked to lie inside the file, so
    /// [`GgufFile::tensor_data`] never copies or fails afterwards. Parse errors name the path.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let bytes = Bytes::map(path)?;
        let header = parse::parse_header(bytes.as_slice()).map_err(|e| e.in_file(path))?;
        Ok(GgufFile::assemble(header, bytes, Some(path.to_path_buf())))
    }

    /// Parses the header of a complete file held in memory, validating tensors against its
    /// length. Keeps nothing; used by the fuzz target and by tools that only need metadata.
    pub fn from_bytes(bytes: &[u8]) -> Result<GgufHeader> {
        parse::parse_header(bytes)
    }

    /// Parses a file held in an owned buffer (tests, files written by [`GgufWriter`]). Tensor
    /// data is then only byte-aligned in memory, unlike with [`GgufFile::open`].
    pub fn from_vec(bytes: Vec<u8>) -> Result<GgufFile> {
        let header = parse::parse_header(&bytes)?;
        Ok(GgufFile::assemble(header, Bytes::Owned(bytes), None))
    }

    fn assemble(header: GgufHeader, bytes: Bytes, path: Option<PathBuf>) -> GgufFile {
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        GgufFile {
            header,
            bytes: std::sync::Arc::new(bytes),
            path,
            by_name,
        }
    }

    /// The header (also reachable through `Deref`).
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The path given to [`GgufFile::open`]; `None` for in-memory files.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Total length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name
            .get(name)
            .and_then(|&i| self.header.tensors.get(i))
    }

    /// The tensor's bytes, a zero-copy slice of the file. For an info taken from this file the
    /// range was validated at open; for any other info that does not fit, the slice is empty.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let (s, e) = self.tensor_range(info);
        &self.bytes.as_slice()[s..e]
    }

    /// The tensor's bytes as a handle that keeps the file mapped (no copy), for weights that outlive
    /// this `GgufFile`. Empty under the same conditions as [`GgufFile::tensor_data`].
    pub fn tensor_shared(&self, info: &TensorInfo) -> SharedBytes {
        let (s, e) = self.tensor_range(info);
        SharedBytes::new(self.bytes.clone(), s, e - s)
    }

    /// The tensor's byte range in the file, or an empty range when it does not fit.
    fn tensor_range(&self, info: &TensorInfo) -> (usize, usize) {
        let start = self.header.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.n_bytes()));
        let len = self.bytes.as_slice().len();
        match (start, end) {
            (Some(s), Some(e)) => match (usize::try_from(s), usize::try_from(e)) {
                (Ok(s), Ok(e)) if s <= e && e <= len => (s, e),
                _ => (0, 0),
            },
            _ => (0, 0),
        }
    }

    /// Shorthand for `tensor(name)` + `tensor_data`.
    pub fn tensor_bytes(&self, name: &str) -> Option<(&TensorInfo, &[u8])> {
        let info = self.tensor(name)?;
        Some((info, self.tensor_data(info)))
    }
}

#[cfg(test)]
mod tests;
