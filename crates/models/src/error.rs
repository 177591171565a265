use baimo_formats::FormatError;

/// Everything that can go wrong while building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("unsupported architecture `{0}` (supported: llama, qwen2, qwen3)")]
    UnsupportedArch(String),
    #[error("unsupported tensor type {dtype} for tensor `{name}`")]
    UnsupportedTensorType { name: String, dtype: String },
    #[error("kernel: {0}")]
    Kernel(String),
    #[error(transparent)]
    Tokenize(#[from] baimo_tokenize::TokenizeError),
    #[error("tensor `{name}` has no llama.cpp name in a {arch} model")]
    UnmappedTensor { name: String, arch: &'static str },
    #[error("tensor `{name}` of a {arch} GGUF file has no Hugging Face name")]
    NoHfName { name: String, arch: &'static str },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    BadShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("missing or invalid config value `{0}`")]
    BadConfig(String),
    #[error("unsupported rope scaling `{0}` (supported: none, linear, llama3)")]
    UnsupportedRopeScaling(String),
    #[error("{path}: {message}")]
    Json { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("context overflow: {needed} tokens needed but the context holds {ctx}")]
    ContextOverflow { needed: usize, ctx: usize },
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    BadToken { id: u32, vocab: usize },
    #[error("device `{name}`: {message}")]
    Device { name: String, message: String },
}
