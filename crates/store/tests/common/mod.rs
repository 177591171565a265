//! Test helpers: a fake Hugging Face Hub (`HEAD`/`GET /{repo}/resolve/{rev}/{file}` with
//! `Content-Length`, `X-Linked-Etag`, `X-Linked-Size` and `Range` → 206), fake wheels and a fake
//! `pip` that copies them into `-d DIR`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A fresh empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "baimo-store-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One file the fake hub serves.
#[derive(Clone)]
pub struct HubFile {
    pub body: Vec<u8>,
    /// Sent as `X-Linked-Etag` (quoted) when set, as an LFS file would be.
    pub lfs_sha256: Option<String>,
    /// Honour `Range` (else always 200 with the whole body).
    pub ranges: bool,
}

impl HubFile {
    pub fn lfs(body: Vec<u8>) -> HubFile {
        let sha = sha256_hex(&body);
        HubFile {
            body,
            lfs_sha256: Some(sha),
            ranges: true,
        }
    }
    pub fn plain(body: Vec<u8>) -> HubFile {
        HubFile {
            body,
            lfs_sha256: None,
            ranges: true,
        }
    }
}

/// Requests seen: "METHOD PATH" plus " range=..." when a Range header came.
pub type Log = Arc<Mutex<Vec<String>>>;

pub struct FakeHub {
    pub endpoint: String,
    pub log: Log,
}

impl FakeHub {
    /// Serves `files` keyed by "repo/file" (revision `main`).
    pub fn start(files: HashMap<String, HubFile>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log: Log = Arc::default();
        let files = Arc::new(files);
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let files = files.clone();
                let log = log2.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &files, &log);
                });
            }
        });
        FakeHub { endpoint, log }
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(
    mut stream: TcpStream,
    files: &HashMap<String, HubFile>,
    log: &Log,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut range: Option<String> = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    log.lock().unwrap().push(match &range {
        Some(r) => format!("{method} {path} range={r}"),
        None => format!("{method} {path}"),
    });
    let key = path
        .trim_start_matches('/')
        .replacen("/resolve/main/", "/", 1);
    let Some(file) = files.get(&key) else {
        let body = b"Entry not found";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        if method != "HEAD" {
            stream.write_all(body)?;
        }
        return stream.flush();
    };
    let total = file.body.len();
    let (status, start, end) = match range
        .as_deref()
        .and_then(parse_range)
        .filter(|_| file.ranges)
    {
        Some((s, e)) => {
            let e = e.unwrap_or(total - 1).min(total - 1);
            ("206 Partial Content", s, e + 1)
        }
        None => ("200 OK", 0, total),
    };
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\nAccept-Ranges: bytes\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\n", end - start);
    if status.starts_with("206") {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            end - 1
        ));
    }
    match &file.lfs_sha256 {
        Some(sha) => head.push_str(&format!(
            "ETag: \"{sha}\"\r\nX-Linked-Etag: \"{sha}\"\r\nX-Linked-Size: {total}\r\n"
        )),
        None => head.push_str("ETag: \"0123456789abcdef0123456789abcdef01234567\"\r\n"),
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(&file.body[start..end])?;
    }
    stream.flush()
}

fn parse_range(r: &str) -> Option<(usize, Option<usize>)> {
    let spec = r.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    Some((
        a.parse().ok()?,
        if b.is_empty() {
            None
        } else {
            Some(b.parse().ok()?)
        },
    ))
}

/// A localhost URL nothing listens on.
pub fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// Writes `dist-ver-py3-none-any.whl` (deflated zip) with the given members into `dir`.
pub fn make_wheel(dir: &Path, package: &str, version: &str, members: &[(&str, &[u8])]) -> PathBuf {
    use zip::write::SimpleFileOptions;
    let path = dir.join(format!(
        "{}-{version}-py3-none-any.whl",
        package.replace('-', "_")
    ));
    let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in members {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
    path
}

/// A `pip` stand-in: `fake-pip download ... -d DIR PKG==VER` copies `WHEELS/pkg-ver-*.whl` to DIR
/// and appends its arguments to `WHEELS/pip.log`; unknown packages fail like pip does.
pub fn fake_pip(wheels: &Path) -> Vec<String> {
    let script = wheels.join("fake-pip");
    let text = format!(
        r#"#!/bin/sh
echo "$@" >> "{w}/pip.log"
dir=""; spec=""
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dir="$2"; shift 2;;
    *==*) spec="$1"; shift;;
    *) shift;;
  esac
done
pkg=$(echo "${{spec%%==*}}" | tr - _)
ver="${{spec##*==}}"
src="{w}/$pkg-$ver-py3-none-any.whl"
if [ ! -f "$src" ]; then echo "ERROR: No matching distribution found for $spec" >&2; exit 1; fi
cp "$src" "$dir/"
"#,
        w = wheels.display()
    );
    std::fs::write(&script, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    vec![script.display().to_string()]
}
