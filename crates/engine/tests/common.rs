//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared/refdata` beside the repository (CI lays shared/ next to the clone), or `$BAIMO_SHARED/refdata`.
pub fn refdata() -> PathBuf {
    if let Ok(s) = std::env::var("BAIMO_SHARED") {
        return Path::new(&s).join("refdata");
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/refdata");
    assert!(
        p.is_dir(),
        "shared reference data not found at {} (set BAIMO_SHARED)",
        p.display()
    );
    p
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The real models tools/test.sh pulls. Missing files fail the test unless BAIMO_SKIP_REAL_MODELS=1.
pub fn real_model(name: &str) -> Option<PathBuf> {
    let dir = std::env::var("BAIMO_TEST_MODELS_DIR").ok();
    let found = dir
        .as_ref()
        .and_then(|d| baimo_store::ModelStore::new(PathBuf::from(d)).resolve(name));
    if found.is_none() {
        if std::env::var("BAIMO_SKIP_REAL_MODELS").as_deref() == Ok("1") {
            eprintln!("skipping: {name} not available and BAIMO_SKIP_REAL_MODELS=1");
            return None;
        }
        panic!("real model {name} not found in BAIMO_TEST_MODELS_DIR={dir:?}; run tools/test.sh (it pulls them) or set BAIMO_SKIP_REAL_MODELS=1");
    }
    found
}
