#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] baimo_models::ModelError),
    #[error(transparent)]
    Format(#[from] baimo_formats::FormatError),
    #[error(transparent)]
    Tokenize(#[from] baimo_tokenize::TokenizeError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("the prompt is {prompt} tokens but the context holds {ctx} (use a larger --ctx or a shorter prompt)")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{path}: not a model: expected a .gguf file, a Hugging Face model folder (config.json + safetensors) or a llama2.c checkpoint")]
    UnknownModelFormat { path: String },
    #[error("{path}: llama2.c checkpoint needs a tokenizer file (tokenizer.bin or tok<VOCAB>.bin next to it, or --tokenizer)")]
    MissingTokenizer { path: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "perplexity needs at least 2 × ctx tokens (and ctx ≥ 8): the text has {tokens} tokens, ctx is {ctx}"
    )]
    TextTooShort { tokens: usize, ctx: usize },
}
