//! Read-only file bytes: a memory map, or an owned buffer (tests, fuzzing, empty files).

use std::fs::File;
use std::path::Path;

use crate::{FormatError, Result};

/// Bytes of a whole file. Memory-mapped data starts page-aligned, so an offset aligned in the
/// file is aligned in memory too; owned buffers carry no such guarantee.
#[derive(Debug)]
pub(crate) enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    /// Memory-maps `path` read-only. Empty files are not mappable on every platform, so they
    /// become an empty owned buffer.
    pub(crate) fn map(path: &Path) -> Result<Bytes> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        if len == 0 {
            return Ok(Bytes::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and private to this process. Like every reader that maps
        // model files (llama.cpp, candle, safetensors), we assume the file is not truncated or
        // rewritten by another process while mapped; doing so is outside what we can defend.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        Ok(Bytes::Mapped(map))
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}
