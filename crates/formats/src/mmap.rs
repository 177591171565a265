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

/// A byte range of a file that keeps the file's bytes (its memory map) alive: weights handed to the
/// model this way are served from the page cache, never copied. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedBytes {
    owner: std::sync::Arc<Bytes>,
    start: usize,
    len: usize,
}

impl SharedBytes {
    /// `owner[start..start+len]`; the caller has checked the range.
    pub(crate) fn new(owner: std::sync::Arc<Bytes>, start: usize, len: usize) -> SharedBytes {
        debug_assert!(start + len <= owner.as_slice().len());
        SharedBytes { owner, start, len }
    }

    /// Whether the bytes are a memory map (as opposed to an owned buffer).
    pub fn is_mapped(&self) -> bool {
        matches!(*self.owner, Bytes::Mapped(_))
    }
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.owner.as_slice()[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}
