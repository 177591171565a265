//! A small GGUF v3 writer, for tests, fixtures and fuzz seeds. Produces what gguf.cpp's
//! `gguf_write_to_buf` does: header, metadata, tensor infos, padding to the alignment, then each
//! tensor's data padded to the alignment.

use std::path::Path;

use super::types::GgmlType;
use super::value::{type_id, Value};
use super::DEFAULT_ALIGNMENT;
use crate::{FormatError, Result};

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then serializes them.
///
/// ```
/// use baimo_formats::gguf::{GgufFile, GgufWriter, GgmlType, Value};
/// let mut w = GgufWriter::new();
/// w.add_kv("general.architecture", Value::from("llama"));
/// w.add_tensor("t", GgmlType::F32, &[2], 1f32.to_le_bytes().repeat(2)).unwrap();
/// let f = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
/// assert_eq!(f.architecture(), Some("llama"));
/// ```
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter::new()
    }
}

fn err(reason: String) -> FormatError {
    FormatError::Writer { reason }
}

impl GgufWriter {
    /// A version-3 writer with no metadata.
    pub fn new() -> GgufWriter {
        GgufWriter {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Writes `version` (2 or 3; they share a layout) in the header.
    pub fn with_version(mut self, version: u32) -> GgufWriter {
        self.version = version;
        self
    }

    /// Adds or replaces a key. Set `general.alignment` (as `Value::U32`) to change the alignment.
    pub fn add_kv(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Adds a tensor; `dims` in ggml order (row length first). `data` must be exactly its size.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let n: u64 = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| err(format!("{name}: dims overflow")))?;
        let need = dtype
            .bytes_for(n)
            .ok_or_else(|| err(format!("{name}: {n} elements is not whole {dtype} blocks")))?;
        if need != data.len() as u64 {
            return Err(err(format!(
                "{name}: {dtype} {dims:?} needs {need} bytes, got {}",
                data.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(err(format!("duplicate tensor {name:?}")));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            dtype,
            data,
        });
        Ok(self)
    }

    fn alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => v
                .as_u32()
                .filter(|a| a.is_power_of_two())
                .map(u64::from)
                .ok_or_else(|| {
                    err(format!(
                        "general.alignment must be a power of two, got {v:?}"
                    ))
                }),
        }
    }

    /// Serializes the file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = self.alignment()? as usize;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut out, v, k)?;
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.dtype.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += t.data.len().next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        Ok(out)
    }

    /// Serializes the file to `path`.
    pub fn write_to_path(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()?).map_err(|e| FormatError::io(path, e))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value, key: &str) -> Result<()> {
    match v {
        Value::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            // An empty array has no element to take the type from; any element type reads back
            // as the same empty `Value::Array`, so u8 it is.
            let t = items.first().map_or(type_id::U8, Value::type_id);
            if let Some(bad) = items.iter().find(|i| i.type_id() != t) {
                return Err(err(format!(
                    "array {key:?} mixes {} and {}",
                    items.first().map_or("?", Value::type_name),
                    bad.type_name()
                )));
            }
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i, key)?;
            }
        }
    }
    Ok(())
}
