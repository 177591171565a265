#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] baimo_models::ModelError),
    #[error(transparent)]
    Tokenize(#[from] baimo_tokenize::TokenizeError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    BadRecord {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("no usable training examples ({0})")]
    NoData(String),
}
