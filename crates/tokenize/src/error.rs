//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while building a tokenizer, encoding, decoding or rendering a
/// chat template. Variants name the key, file or token at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// A required GGUF metadata key is absent.
    #[error("GGUF metadata key `{key}` is missing")]
    MissingKey { key: String },
    /// A GGUF metadata key has an unexpected type or shape.
    #[error("GGUF metadata key `{key}` is malformed: expected {expected}")]
    BadKey { key: String, expected: &'static str },
    /// `tokenizer.ggml.model` names a tokenizer family this crate does not build.
    #[error("unsupported tokenizer model `{name}` (tokenizer.ggml.model); supported: gpt2, llama")]
    UnsupportedModel { name: String },
    /// `tokenizer.ggml.pre` names a pre-tokenizer that is not in llama.cpp's table as mirrored here.
    #[error("unsupported pre-tokenizer `{name}` (tokenizer.ggml.pre); known: {known}")]
    UnsupportedPre { name: String, known: String },
    /// A Hugging Face tokenizer that has no GGUF form Baimo can write (what is unsupported is named).
    #[error("cannot convert the tokenizer {path} to GGUF: {what}")]
    Unconvertible { path: PathBuf, what: String },
    /// The vocabulary is inconsistent (lengths differ, merges name unknown tokens, ...).
    #[error("invalid vocabulary in {source_name}: {reason}")]
    InvalidVocab { source_name: String, reason: String },
    /// A token id outside the vocabulary was passed to `decode`/`token_bytes`.
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The model file itself could not be read (GGUF parse error, llama2.c vocabulary truncated).
    #[error(transparent)]
    Format(#[from] baimo_formats::FormatError),
    /// A JSON file (tokenizer_config.json, generation_config.json) does not parse.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The `tokenizers` crate rejected the pipeline or failed to encode/decode.
    #[error("tokenizers ({context}): {message}")]
    Tokenizers {
        context: &'static str,
        message: String,
    },
    /// A chat template failed to compile or render (includes `raise_exception` messages).
    #[error("chat template {stage} failed: {message}")]
    Template {
        stage: &'static str,
        message: String,
    },
}

/// Crate result alias.
pub type Result<T, E = TokenizeError> = std::result::Result<T, E>;

impl TokenizeError {
    pub(crate) fn tk(context: &'static str, e: impl std::fmt::Display) -> Self {
        TokenizeError::Tokenizers {
            context,
            message: e.to_string(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TokenizeError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn vocab(source_name: impl Into<String>, reason: impl Into<String>) -> Self {
        TokenizeError::InvalidVocab {
            source_name: source_name.into(),
            reason: reason.into(),
        }
    }
}
