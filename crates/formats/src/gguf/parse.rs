//! The GGUF header parser: a bounds-checked cursor over the file bytes.
//!
//! Follows `gguf_init_from_file_impl` in ggml/src/gguf.cpp and the GGUF spec (ggml/docs/gguf.md).
//! Every count read from the file is checked against the bytes that remain before anything is
//! allocated, so a hostile header cannot make us reserve more than a small multiple of its size.

use std::collections::HashSet;

use super::types::GgmlType;
use super::value::{min_encoded_size, type_id, Value};
use super::{GgufHeader, TensorInfo, DEFAULT_ALIGNMENT};
use crate::{FormatError, Result};

/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays are allowed by the spec but never used in practice; bound the recursion.
pub const MAX_NESTING: usize = 8;

/// Smallest possible encodings, used to bound counts: a key-value pair is an empty key (8 bytes),
/// a type (4) and a one-byte value; a tensor info is an empty name (8), n_dims (4), ggml type
/// (4) and offset (8).
const MIN_KV_SIZE: u64 = 13;
const MIN_TENSOR_INFO_SIZE: u64 = 24;

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let have = self.remaining();
        if n > have {
            return Err(FormatError::Truncated {
                what: what(),
                offset: self.pos(),
                need: n,
                have,
            });
        }
        // n <= remaining, so it fits in usize and the slice is in bounds.
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    pub(crate) fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes (no terminator).
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let start = self.pos();
        let raw = self.take(len, what)?;
        let s = std::str::from_utf8(raw).map_err(|_| FormatError::InvalidUtf8 {
            what: what(),
            offset: start,
        })?;
        Ok(s.to_string())
    }

    /// Fails unless `count` items of at least `min_size` bytes each could fit in the rest.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn Fn() -> String) -> Result<usize> {
        let max = self.remaining() / min_size;
        if count > max {
            return Err(FormatError::CountTooLarge {
                what: what(),
                count,
                offset: self.pos(),
                remaining: self.remaining(),
                max,
            });
        }
        // count <= remaining bytes, which fit in usize.
        Ok(count as usize)
    }

    fn value(&mut self, t: u32, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        use type_id::*;
        Ok(match t {
            U8 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            // gguf.cpp reads a bool as one byte and accepts any non-zero value as true.
            BOOL => Value::Bool(u8::from_le_bytes(self.array(what)?) != 0),
            STRING => Value::String(self.string(what)?),
            ARRAY => self.array_value(depth, what)?,
            other => {
                return Err(FormatError::BadValueType {
                    what: what(),
                    type_id: other,
                    offset: self.pos().saturating_sub(4),
                })
            }
        })
    }

    fn array_value(&mut self, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        if depth >= MAX_NESTING {
            return Err(FormatError::NestingTooDeep {
                offset: self.pos(),
                max: MAX_NESTING,
            });
        }
        let elem_what = || format!("element type of array {}", what());
        let elem_type = self.u32(&elem_what)?;
        let min = min_encoded_size(elem_type).ok_or_else(|| FormatError::BadValueType {
            what: elem_what(),
            type_id: elem_type,
            offset: self.pos() - 4,
        })?;
        let count = self.u64(&|| format!("length of array {}", what()))?;
        let count = self.check_count(count, min, &|| format!("length of array {}", what()))?;
        // Bounded by check_count: at most remaining / min elements.
        let mut items = Vec::with_capacity(count);
        for i in 0..count {
            items.push(self.value(elem_type, depth + 1, &|| {
                format!("element {i} of {}", what())
            })?);
        }
        Ok(Value::Array(items))
    }
}

/// Parses the header, metadata and tensor infos of a GGUF file held in `bytes`, and validates
/// every tensor against `bytes.len()`.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<GgufHeader> {
    let mut c = Cursor::new(bytes);
    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if &magic != b"GGUF" {
        return Err(FormatError::BadMagic { found: magic });
    }
    let version = c.u32(&|| "version".into())?;
    if version != 2 && version != 3 {
        return Err(FormatError::UnsupportedVersion { version });
    }
    let tensor_count = c.u64(&|| "tensor count".into())?;
    let kv_count = c.u64(&|| "metadata count".into())?;
    let kv_count = c.check_count(kv_count, MIN_KV_SIZE, &|| "metadata count".into())?;
    // Tensor infos come after the metadata, so this bound is loose but still proportional.
    let tensor_count = c.check_count(tensor_count, MIN_TENSOR_INFO_SIZE, &|| {
        "tensor count".into()
    })?;

    let metadata = read_metadata(&mut c, kv_count)?;
    let alignment = alignment_of(&metadata)?;
    let tensors = read_tensor_infos(&mut c, tensor_count, alignment)?;

    let header_end = c.pos();
    let data_offset = header_end
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or_else(|| FormatError::BadMetadata {
            key: "general.alignment".into(),
            reason: "data offset overflows".into(),
        })?;
    let header = GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    };
    validate_bounds(&header, bytes.len() as u64)?;
    Ok(header)
}

fn read_metadata(c: &mut Cursor<'_>, count: usize) -> Result<Vec<(String, Value)>> {
    let mut seen = HashSet::with_capacity(count);
    // Bounded by check_count in the caller.
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        let what = || format!("value of metadata key {key:?}");
        let t = c.u32(&|| format!("type of metadata key {key:?}"))?;
        let value = c.value(t, 0, &what)?;
        if !seen.insert(key.clone()) {
            return Err(FormatError::DuplicateKey { key });
        }
        out.push((key, value));
    }
    Ok(out)
}

/// `general.alignment`: gguf.cpp requires a non-zero power of two (it insists on u32; we accept
/// any integer width that fits, as our getters do).
fn alignment_of(metadata: &[(String, Value)]) -> Result<u64> {
    let Some((key, v)) = metadata.iter().find(|(k, _)| k == "general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match v.as_u32() {
        Some(a) if a.is_power_of_two() => Ok(a.into()),
        _ => Err(FormatError::BadMetadata {
            key: key.clone(),
            reason: format!(
                "alignment must be a non-zero power of two that fits in u32, got {v:?}"
            ),
        }),
    }
}

fn read_tensor_infos(c: &mut Cursor<'_>, count: usize, alignment: u64) -> Result<Vec<TensorInfo>> {
    let mut seen = HashSet::with_capacity(count);
    // Bounded by check_count in the caller.
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name = c.string(&|| format!("name of tensor {i}"))?;
        let n_dims = c.u32(&|| format!("n_dims of tensor {name:?}"))?;
        if n_dims > MAX_DIMS {
            return Err(FormatError::BadTensorShape {
                name,
                reason: format!("{n_dims} dimensions, ggml supports at most {MAX_DIMS}"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor {name:?}"))?);
        }
        let type_id = c.u32(&|| format!("type of tensor {name:?}"))?;
        let offset = c.u64(&|| format!("offset of tensor {name:?}"))?;
        let dtype = GgmlType::from_id(type_id, &name)?;
        if !seen.insert(name.clone()) {
            return Err(FormatError::DuplicateTensor { name });
        }
        let info = TensorInfo {
            name,
            dims,
            dtype,
            offset,
        };
        validate_shape(&info)?;
        if offset % alignment != 0 {
            return Err(FormatError::MisalignedTensor {
                name: info.name,
                offset,
                alignment,
            });
        }
        out.push(info);
    }
    Ok(out)
}

/// gguf.cpp's checks: every dimension non-negative as i64, the element count fits in i64, and
/// the row length `dims[0]` is a whole number of blocks.
fn validate_shape(info: &TensorInfo) -> Result<()> {
    let bad = |reason: String| FormatError::BadTensorShape {
        name: info.name.clone(),
        reason,
    };
    let mut n: u64 = 1;
    for &d in &info.dims {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                bad(format!(
                    "dimensions {:?} overflow the element count",
                    info.dims
                ))
            })?;
    }
    let row = info.dims.first().copied().unwrap_or(1);
    let bs = info.dtype.block_size() as u64;
    if row % bs != 0 {
        return Err(bad(format!(
            "row length {row} is not a multiple of the {} block size {bs}",
            info.dtype
        )));
    }
    if info.dtype.bytes_for(n).is_none() {
        return Err(bad(format!(
            "byte size of {n} {} elements overflows",
            info.dtype
        )));
    }
    Ok(())
}

fn validate_bounds(h: &GgufHeader, file_len: u64) -> Result<()> {
    for t in &h.tensors {
        let len = t.n_bytes();
        let end = h
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(len));
        if end.is_none_or(|end| end > file_len) {
            return Err(FormatError::TensorOutOfBounds {
                name: t.name.clone(),
                offset: h.data_offset.saturating_add(t.offset),
                len,
                file_len,
            });
        }
    }
    Ok(())
}
