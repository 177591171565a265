//! The fuzz seeds (written by fuzz/make_seeds.py, an encoder independent of this crate) must
//! parse, with the values the script put in. This checks the readers against a second encoding
//! and keeps the seeds useful.

use std::path::{Path, PathBuf};

use baimo_formats::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use baimo_formats::llama2c::{parse_vocab, Llama2cCheckpoint};
use baimo_formats::safetensors::{parse_index, read_header, Dtype};

fn seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds")
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(seeds().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn gguf_seeds() {
    let f = GgufFile::from_vec(read("gguf/llama_v3.gguf")).unwrap();
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_u64("big"), Some(1 << 40));
    assert_eq!(f.get_i64("neg"), Some(-5));
    assert_eq!(f.get_f64("d"), Some(0.5));
    assert_eq!(
        f.get("nested").and_then(Value::as_array).map(<[_]>::len),
        Some(2)
    );
    let (t, data) = f.tensor_bytes("q4_0").unwrap();
    assert_eq!(
        (t.dtype, data),
        (GgmlType::Q4_0, &(0u8..18).collect::<Vec<_>>()[..])
    );
    assert_eq!(f.tensor("bf16").unwrap().n_bytes(), 6);

    // Our writer produces the same bytes as the independent encoder.
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        w.add_kv(k, v.clone());
    }
    for t in &f.tensors {
        w.add_tensor(&t.name, t.dtype, &t.dims, f.tensor_data(t).to_vec())
            .unwrap();
    }
    assert_eq!(w.to_bytes().unwrap(), read("gguf/llama_v3.gguf"));

    let f = GgufFile::from_vec(read("gguf/v2_align64.gguf")).unwrap();
    assert_eq!((f.version, f.alignment), (2, 64));
    assert!(GgufFile::from_bytes(&read("gguf/vocab_only.gguf"))
        .unwrap()
        .tensors
        .is_empty());
}

#[test]
fn safetensors_seeds() {
    let h = read_header(&read("safetensors/model.safetensors")).unwrap();
    let names: Vec<_> = h.iter().map(|t| (t.name.as_str(), t.dtype)).collect();
    assert_eq!(
        names,
        [("w", Dtype::F32), ("h", Dtype::F16), ("b", Dtype::BF16)]
    );
    let idx = parse_index(std::str::from_utf8(&read("safetensors/index.json")).unwrap()).unwrap();
    assert_eq!(idx.len(), 2);
}

#[test]
fn llama2c_seeds() {
    let c = Llama2cCheckpoint::from_vec(read("llama2c/shared.bin")).unwrap();
    assert!(c.config.shared_classifier);
    let c = Llama2cCheckpoint::from_vec(read("llama2c/unshared.bin")).unwrap();
    assert!(!c.config.shared_classifier);
    let lm = c.tensor("lm_head.weight").unwrap().to_f32_vec();
    assert_eq!(lm.len(), 12);
    let tok = read("llama2c/tok4.bin");
    let v = parse_vocab(&tok[2..], 4).unwrap();
    assert_eq!(v.tokens[3], (b"ab".to_vec(), -2.0));
}
