//! Helpers shared by the LoRA and merge tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use baimo_models::{KvCache, Logits, Transformer};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn read_f32(rel: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join(rel)).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn logits_all(m: &Transformer, prompt: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(m.config(), 64);
    m.forward(prompt, &mut cache, Logits::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let range = want.iter().fold(0f32, |a, &x| a.max(x.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
        / range
}

/// `<repo>/../shared/refdata`, or `$BAIMO_SHARED/refdata` (BAIMO_SHARED may also point at the refdata folder
/// itself), as the tokenize crate's tests find it.
pub fn refdata() -> PathBuf {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/refdata");
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
