//! The one error type of this crate. Every variant names the thing that failed (file, key, tensor,
//! offset, sizes) so that its `Display` reads as one self-contained line.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing a model file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A parse error, tagged with the file it came from (see [`FormatError::innermost`]).
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        source: Box<FormatError>,
    },

    #[error("not a GGUF file: magic is {} ({:02x?}), expected \"GGUF\"", String::from_utf8_lossy(found).escape_debug(), found)]
    BadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {version} (supported: 2 and 3; version 1 files must be re-converted)")]
    UnsupportedVersion { version: u32 },

    #[error("truncated file: reading {what} at offset {offset} needs {need} bytes but only {have} remain")]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        have: u64,
    },

    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },

    #[error("unknown GGUF value type {type_id} for {what} at offset {offset}")]
    BadValueType {
        what: String,
        type_id: u32,
        offset: u64,
    },

    #[error("{what} at offset {offset} is {count}, but the {remaining} remaining bytes can hold at most {max}")]
    CountTooLarge {
        what: String,
        count: u64,
        offset: u64,
        remaining: u64,
        max: u64,
    },

    #[error("GGUF arrays nested deeper than {max} levels at offset {offset}")]
    NestingTooDeep { offset: u64, max: usize },

    #[error("duplicate metadata key {key:?}")]
    DuplicateKey { key: String },

    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor { name: String },

    #[error("metadata key {key:?}: {reason}")]
    BadMetadata { key: String, reason: String },

    #[error("tensor {name:?} has unsupported ggml type {type_id} ({})", type_name.unwrap_or("unknown"))]
    UnsupportedTensorType {
        name: String,
        type_id: u32,
        type_name: Option<&'static str>,
    },

    #[error("tensor {name:?}: {reason}")]
    BadTensorShape { name: String, reason: String },

    #[error(
        "tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },

    #[error("tensor {name:?}: bytes [{offset}, {offset}+{len}) lie outside the file of {file_len} bytes")]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        len: u64,
        file_len: u64,
    },

    #[error("{path}: not found ({what})")]
    MissingFile { path: PathBuf, what: &'static str },

    #[error("{path}: bad safetensors header: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },

    #[error("{path}: bad safetensors index: {reason}")]
    BadIndex { path: PathBuf, reason: String },

    #[error("tensor {tensor:?} is mapped to shard {shard:?}, which {reason}")]
    MissingShard {
        tensor: String,
        shard: String,
        reason: &'static str,
    },

    #[error("bad llama2.c checkpoint: {reason}")]
    BadLlama2c { reason: String },

    #[error("llama2.c checkpoint size mismatch: the header implies {expected} bytes ({detail}), the file has {actual}")]
    Llama2cSize {
        expected: u64,
        actual: u64,
        detail: String,
    },

    #[error("bad llama2.c vocabulary: {reason}")]
    BadVocab { reason: String },

    #[error("GGUF writer: {reason}")]
    Writer { reason: String },
}

impl FormatError {
    /// The error under any [`FormatError::InFile`] wrappers, for matching on the actual problem.
    pub fn innermost(&self) -> &FormatError {
        match self {
            FormatError::InFile { source, .. } => source.innermost(),
            other => other,
        }
    }

    pub(crate) fn in_file(self, path: &std::path::Path) -> FormatError {
        match self {
            e @ (FormatError::Io { .. } | FormatError::InFile { .. }) => e,
            e => FormatError::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> FormatError {
        FormatError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
