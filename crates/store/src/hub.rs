//! Downloads from the Hugging Face Hub (or a mirror named by `HF_ENDPOINT`) through `hf-hub`.
//!
//! `hf-hub` 1.x is async; a private current-thread tokio runtime drives it so the store's API
//! stays blocking. Resuming: `hf-hub`'s `download_file_stream` takes a byte range (sent as an
//! HTTP `Range` header, or a Xet range for Xet-backed files), so an interrupted download keeps
//! its `FILE.part` and continues from its length; the file is renamed only after its sha256
//! checks out. The expected sha256 of a file without a catalog hash is the LFS oid that the Hub
//! reports in `X-Linked-Etag` on the (non-followed) redirect of `HEAD /{repo}/resolve/{rev}/{file}`,
//! the same header `huggingface_hub.file_download.get_hf_file_metadata` reads.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result, StoreError};
use crate::verify::{byte_bar, hash_reader, is_sha256_hex, HashingWriter};
use crate::PullOptions;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What a `HEAD` on a resolve URL tells about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileMeta {
    /// The LFS sha256 when the etag is one (git-stored small files have a sha1 etag instead).
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

/// A connection to one Hub endpoint.
pub(crate) struct Hub {
    rt: tokio::runtime::Runtime,
    client: hf_hub::HFClient,
    head_client: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    progress: bool,
}

/// The endpoint used: the option, else `HF_ENDPOINT`, else huggingface.co.
pub(crate) fn endpoint(opts: &PullOptions) -> String {
    opts.hf_endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// The token used: the option, else `HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token` (as hf-hub).
fn token(opts: &PullOptions) -> Option<String> {
    let from_file = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    opts.hf_token
        .clone()
        .or_else(|| std::env::var("HF_TOKEN").ok())
        .or_else(|| {
            std::env::var("HF_TOKEN_PATH")
                .ok()
                .and_then(|p| from_file(p.into()))
        })
        .or_else(|| from_file(hf_hub::hf_home().join("token")))
        .filter(|t| !t.is_empty())
}

fn hub_err(url: &str, message: impl std::fmt::Display) -> StoreError {
    StoreError::Hub {
        url: url.to_string(),
        message: message.to_string(),
    }
}

impl Hub {
    pub(crate) fn new(opts: &PullOptions) -> Result<Hub> {
        let endpoint = endpoint(opts);
        let token = token(opts);
        let ua = concat!("baimo-store/", env!("CARGO_PKG_VERSION"), "; hf-hub/1");
        let build = |redirects: bool| {
            let policy = if redirects {
                reqwest::redirect::Policy::limited(10)
            } else {
                reqwest::redirect::Policy::none()
            };
            reqwest::Client::builder()
                .user_agent(ua)
                .connect_timeout(opts.connect_timeout)
                .read_timeout(opts.read_timeout)
                .redirect(policy)
                .build()
                .map_err(|e| hub_err(&endpoint, e))
        };
        let mut builder = hf_hub::HFClient::builder()
            .endpoint(endpoint.clone())
            .client(build(true)?)
            .cache_enabled(false)
            .retry_max_attempts(2)
            .retry_base_delay(Duration::from_millis(200));
        if let Some(t) = &token {
            builder = builder.token(t.clone());
        }
        let client = builder.build().map_err(|e| hub_err(&endpoint, e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                path: PathBuf::from("<tokio runtime>"),
                source,
            })?;
        Ok(Hub {
            rt,
            client,
            head_client: build(false)?,
            endpoint,
            token,
            progress: opts.progress,
        })
    }

    pub(crate) fn url(&self, repo: &str, revision: &str, file: &str) -> String {
        format!("{}/{repo}/resolve/{revision}/{file}", self.endpoint)
    }

    /// `HEAD` without following redirects; `Ok(None)` when the file does not exist (404).
    pub(crate) fn head(&self, repo: &str, revision: &str, file: &str) -> Result<Option<FileMeta>> {
        let url = self.url(repo, revision, file);
        let mut req = self.head_client.head(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        // `send` arms its timeout immediately, so it must run inside the runtime.
        let resp = self
            .rt
            .block_on(async move { req.send().await })
            .map_err(|e| hub_err(&url, describe_reqwest(&e)))?;
        let status = resp.status();
        if status.as_u16() == 404 {
            return Ok(None);
        }
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(hub_err(
                &url,
                format!("HTTP {status} (gated or private repository? set HF_TOKEN)"),
            ));
        }
        if !(status.is_success() || status.is_redirection()) {
            return Err(hub_err(&url, format!("HTTP {status}")));
        }
        let h = resp.headers();
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let etag = get("x-linked-etag").or_else(|| get("etag")).map(|e| {
            let e = e.strip_prefix("W/").unwrap_or(&e);
            e.trim_matches('"').to_ascii_lowercase()
        });
        let size = get("x-linked-size")
            .or_else(|| get("content-length"))
            .and_then(|s| s.parse().ok());
        Ok(Some(FileMeta {
            sha256: etag.filter(|e| is_sha256_hex(e)),
            size,
        }))
    }

    /// Downloads `file` of `repo` to `dest`, resuming from `dest.part` when present, and returns
    /// (sha256, length) of the complete file. The caller checks the hash; the `.part` file is
    /// renamed to `dest` only by [`crate::verify::check`]'s caller after a match.
    pub(crate) fn download(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        part: &Path,
        size: Option<u64>,
    ) -> Result<(String, u64)> {
        let url = self.url(repo, revision, file);
        let (owner, name) = hf_hub::split_id(repo);
        let handle = self.client.model(owner, name);

        let (mut hasher, mut have) = (Sha256::new(), 0u64);
        if let Ok(meta) = std::fs::metadata(part) {
            have = meta.len();
            if size.is_none() || size.is_some_and(|s| have > s) {
                have = 0; // cannot resume without knowing the total, or the partial file is too long
            } else {
                let mut f = File::open(part).at(part)?;
                let mut n = 0;
                hash_reader(&mut f, &mut hasher, &mut n).at(part)?;
            }
        }
        let file_handle = OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .at(part)?;
        if have == 0 {
            file_handle.set_len(0).at(part)?;
        }
        let bar = byte_bar(self.progress, size, short_name(file));
        let mut w = HashingWriter::resume(file_handle, hasher, have, bar);

        let mut attempts_left = 3;
        let mut restarted = false;
        loop {
            let start = w.len();
            if size.is_some_and(|s| start >= s) {
                break;
            }
            let range = size.filter(|_| start > 0).map(|s| start..s);
            let result = self.rt.block_on(async {
                let (_len, mut stream) = handle
                    .download_file_stream()
                    .filename(file)
                    .revision(revision)
                    .maybe_range(range.clone())
                    .send()
                    .await
                    .map_err(|e| hub_err(&url, e))?;
                // hf-hub does not expose the status, so a server that ignores `Range` (200 with
                // the whole file) shows up as more bytes than the range holds.
                let want = range.as_ref().map(|r| r.end - r.start);
                let mut received = 0u64;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| hub_err(&url, e))?;
                    received += chunk.len() as u64;
                    if want.is_some_and(|n| received > n) {
                        return Ok(Attempt::RangeIgnored);
                    }
                    w.write_all(&chunk).at(part)?;
                }
                Ok::<Attempt, StoreError>(Attempt::Done)
            });
            match result {
                Ok(Attempt::Done) => break,
                Ok(Attempt::RangeIgnored) if !restarted => {
                    restarted = true;
                    w.reset().at(part)?;
                }
                Ok(Attempt::RangeIgnored) => {
                    return Err(hub_err(&url, "the server ignores HTTP Range requests"))
                }
                Err(e) => {
                    attempts_left -= 1;
                    // Retry only when bytes arrived: a dead endpoint must fail fast.
                    if attempts_left == 0 || w.len() == start || size.is_none() {
                        return Err(e);
                    }
                }
            }
        }
        w.finish().at(part)
    }
}

/// How one streaming attempt ended.
enum Attempt {
    Done,
    RangeIgnored,
}

fn short_name(file: &str) -> String {
    file.rsplit('/').next().unwrap_or(file).to_string()
}

/// reqwest's Display hides the cause ("error sending request"); walk the chain.
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_timeout() || e.is_connect() {
        msg.push_str(" (hub unreachable)");
    }
    msg
}
