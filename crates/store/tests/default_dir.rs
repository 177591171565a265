//! In its own test binary: it changes the process environment.

use baimo_store::ModelStore;

#[test]
fn default_dir_honours_baimo_models_dir() {
    std::env::set_var("BAIMO_MODELS_DIR", "/tmp/baimo-models-env-test");
    assert_eq!(
        ModelStore::default_dir(),
        std::path::PathBuf::from("/tmp/baimo-models-env-test")
    );
    std::env::remove_var("BAIMO_MODELS_DIR");
    assert!(ModelStore::default_dir().ends_with("baimo/models"));
}
