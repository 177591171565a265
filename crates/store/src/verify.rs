//! Streaming sha256, the check every source must pass, and the progress bar.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result, StoreError};

/// Lowercase hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True for a 64-digit hex string (a sha256, as the Hub's LFS etag is).
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// sha256 and length of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    hash_reader(&mut f, &mut h, &mut n).at(path)?;
    Ok((hex(&h.finalize()), n))
}

pub(crate) fn hash_reader(r: &mut impl Read, h: &mut Sha256, n: &mut u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok(());
        }
        h.update(&buf[..k]);
        *n += k as u64;
    }
}

/// A file being written whose sha256 and length are kept up to date, with a progress bar.
pub(crate) struct HashingWriter {
    file: File,
    hasher: Sha256,
    len: u64,
    bar: ProgressBar,
}

impl HashingWriter {
    pub(crate) fn new(file: File, bar: ProgressBar) -> Self {
        HashingWriter {
            file,
            hasher: Sha256::new(),
            len: 0,
            bar,
        }
    }

    /// Continues after `prefix_len` bytes already in `file` whose hash state is `hasher`.
    pub(crate) fn resume(file: File, hasher: Sha256, prefix_len: u64, bar: ProgressBar) -> Self {
        bar.set_position(prefix_len);
        HashingWriter {
            file,
            hasher,
            len: prefix_len,
            bar,
        }
    }

    /// Drops everything written so far (the server sent the whole file instead of a range).
    pub(crate) fn reset(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.hasher = Sha256::new();
        self.len = 0;
        self.bar.set_position(0);
        Ok(())
    }

    pub(crate) fn set_message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Flushes and returns (sha256 hex, length).
    pub(crate) fn finish(mut self) -> std::io::Result<(String, u64)> {
        self.file.flush()?;
        self.file.sync_all()?;
        self.bar.finish_and_clear();
        Ok((hex(&self.hasher.finalize()), self.len))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.file.write(buf)?;
        self.hasher.update(&buf[..k]);
        self.len += k as u64;
        self.bar.inc(k as u64);
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Checks an assembled/downloaded file against what its source promises; on failure the file
/// is deleted (a wrong file must never be picked up later) and both values are reported.
pub(crate) fn check(
    path: &Path,
    actual_sha: &str,
    actual_len: u64,
    expected_sha: Option<&str>,
    expected_len: Option<u64>,
    origin: &str,
) -> Result<()> {
    if let Some(expected) = expected_len {
        if expected != actual_len {
            let _ = std::fs::remove_file(path);
            return Err(StoreError::SizeMismatch {
                expected,
                actual: actual_len,
                origin: origin.to_string(),
            });
        }
    }
    if let Some(expected) = expected_sha {
        if !expected.eq_ignore_ascii_case(actual_sha) {
            let _ = std::fs::remove_file(path);
            return Err(StoreError::ChecksumMismatch {
                expected: expected.to_ascii_lowercase(),
                actual: actual_sha.to_string(),
                origin: origin.to_string(),
            });
        }
    }
    Ok(())
}

/// A byte progress bar on stderr (bytes, rate, ETA), or a hidden one.
pub(crate) fn byte_bar(show: bool, total: Option<u64>, msg: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
    } else {
        "{msg} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc() {
        let dir = std::env::temp_dir().join(format!("baimo-store-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("abc");
        std::fs::write(&p, b"abc").unwrap();
        let (sha, n) = sha256_file(&p).unwrap();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(n, 3);
        assert!(check(&p, &sha, 3, Some(&sha.to_uppercase()), Some(3), "t").is_ok());
        let err = check(&p, &sha, 3, Some(&"0".repeat(64)), None, "t").unwrap_err();
        assert!(matches!(err, StoreError::ChecksumMismatch { .. }));
        assert!(!p.exists(), "a mismatching file is deleted");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha_hex_detection() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex("abc"));
        assert!(!is_sha256_hex(&"g".repeat(64)));
    }
}
