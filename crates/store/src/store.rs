//! The models directory: one folder per model holding its file(s) and a JSON sidecar.
//!
//! ```text
//! $BAIMO_MODELS_DIR/                      (default: <data dir>/baimo/models)
//!   qwen2.5-coder-0.5b-instruct/
//!     qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
//!     baimo-model.json                    {name, source, sha256, size, pulled_at, path, files}
//!   Qwen--Qwen2.5-0.5B-Instruct/          (hf:Qwen/Qwen2.5-0.5B-Instruct, a safetensors folder)
//!     config.json tokenizer.json ... model.safetensors baimo-model.json
//!   .tmp/                                 (pip wheels while assembling)
//! ```
//! A folder without a sidecar is an unfinished pull (its `*.part` files are resumed).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StoreError};

/// Name of the sidecar inside each model folder.
pub const SIDECAR: &str = "baimo-model.json";

/// One file of a stored model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the model folder.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// The sidecar: what was pulled, from where, and what it hashes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    pub name: String,
    /// The source that succeeded ([`crate::Source::describe`] or `hf:REPO@REV`).
    pub source: String,
    /// sha256 of the model file; `None` for a folder model (see `files`).
    pub sha256: Option<String>,
    /// Total bytes.
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub pulled_at: u64,
    /// The model path relative to the folder: the file name, or "." for a folder model.
    pub path: String,
    pub files: Vec<FileRecord>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A model name must be a single path component, so a spec can never reach outside the store.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.contains('\0')
}

pub(crate) fn read_sidecar(folder: &Path) -> Result<Sidecar> {
    let p = folder.join(SIDECAR);
    let text = std::fs::read_to_string(&p).at(&p)?;
    serde_json::from_str(&text).map_err(|source| StoreError::Json { path: p, source })
}

pub(crate) fn write_sidecar(folder: &Path, sc: &Sidecar) -> Result<()> {
    let p = folder.join(SIDECAR);
    let tmp = folder.join(format!("{SIDECAR}.tmp"));
    let text = serde_json::to_string_pretty(sc).map_err(|source| StoreError::Json {
        path: p.clone(),
        source,
    })?;
    std::fs::write(&tmp, text + "\n").at(&tmp)?;
    std::fs::rename(&tmp, &p).at(&p)
}

/// Store name of an `hf:` pull: `/` becomes `--` as in the Hub cache (`Qwen--Qwen2.5-0.5B`).
pub fn hf_store_name(repo: &str, file: Option<&str>) -> String {
    let mut name = repo.replace('/', "--");
    if let Some(f) = file {
        name.push_str("--");
        name.push_str(&f.replace('/', "--"));
    }
    name
}

/// Renames `from` to `to`, replacing `to`.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).at(to)
}

/// `path` with `.part` appended to its file name.
pub(crate) fn part_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".part");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        assert!(valid_name("qwen2.5-coder-0.5b-instruct"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(".tmp"));
        assert!(!valid_name("a/b"));
        assert_eq!(
            hf_store_name("Qwen/Qwen2.5-0.5B", Some("a/b.gguf")),
            "Qwen--Qwen2.5-0.5B--a--b.gguf"
        );
        assert_eq!(
            part_path(Path::new("/x/m.gguf")),
            PathBuf::from("/x/m.gguf.part")
        );
    }
}
