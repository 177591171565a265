//! Shared helpers: locating `shared/refdata` and reading llama.cpp's vocab test files.
#![allow(dead_code)]

use std::path::PathBuf;

/// `<repo>/../shared/refdata`, or `$BAIMO_SHARED/refdata` (BAIMO_SHARED may also point at the
/// refdata folder itself).
pub fn refdata() -> PathBuf {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/refdata");
    if beside.is_dir() {
        return beside;
    }
    let shared = PathBuf::from(std::env::var("BAIMO_SHARED").expect(
        "shared/refdata not found next to the repository; set BAIMO_SHARED to the shared folder",
    ));
    if shared.join("refdata").is_dir() {
        shared.join("refdata")
    } else {
        shared
    }
}

/// The cases of `ggml-vocab-NAME.gguf.inp` / `.out`: (input text, expected ids).
pub fn vocab_cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let dir = refdata().join("vocab");
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    assert_eq!(
        texts.pop(),
        Some(""),
        "{name}.inp must end with the separator"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        texts.len(),
        lines.len(),
        "{name}: .inp and .out case counts differ"
    );
    texts
        .into_iter()
        .zip(lines)
        .map(|(t, l)| {
            (
                t.to_string(),
                l.split_whitespace().map(|x| x.parse().unwrap()).collect(),
            )
        })
        .collect()
}

pub fn vocab_gguf(name: &str) -> PathBuf {
    refdata()
        .join("vocab")
        .join(format!("ggml-vocab-{name}.gguf"))
}

/// A GGUF under `$BAIMO_TEST_MODELS_DIR` (flat, or in the store's `<model>/<file>` layout) whose
/// lower-cased file name starts with `prefix`; `None`, with a printed note, when the variable is
/// unset or nothing matches, so the caller skips.
pub fn test_model(prefix: &str) -> Option<PathBuf> {
    let Ok(dir) = std::env::var("BAIMO_TEST_MODELS_DIR") else {
        eprintln!("skipping: BAIMO_TEST_MODELS_DIR is not set (needs {prefix}*.gguf)");
        return None;
    };
    let matches = |p: &std::path::Path| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        p.is_file() && name.starts_with(prefix) && name.ends_with(".gguf")
    };
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            candidates.extend(
                std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else {
            candidates.push(path);
        }
    }
    candidates.sort();
    let found = candidates.into_iter().find(|p| matches(p));
    if found.is_none() {
        eprintln!("skipping: no {prefix}*.gguf under {dir}");
    }
    found
}
