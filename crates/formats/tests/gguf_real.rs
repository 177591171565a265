//! The GGUF reader against real files: the llama.cpp vocab-only files in shared/refdata (always
//! checked when present) and two real quantized models (only when BAIMO_TEST_MODELS_DIR is set;
//! the models crate runs the same files end to end).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baimo_formats::gguf::blocks::{as_blocks, BlockQ4K, BlockQ6K};
use baimo_formats::gguf::{GgmlType, GgufFile};

fn vocab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/refdata/vocab")
}

fn models_dir() -> Option<PathBuf> {
    match std::env::var_os("BAIMO_TEST_MODELS_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!("note: BAIMO_TEST_MODELS_DIR unset, skipping the real-model GGUF test");
            None
        }
    }
}

/// A `.gguf` whose lower-cased name starts with `prefix`, directly in `dir` or one level down (the model
/// store's `<name>/<file>` layout that tools/test.sh produces).
fn find_gguf(dir: &Path, prefix: &str) -> PathBuf {
    let is_match = |p: &Path| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        p.is_file()
            && n.ends_with(".gguf")
            && (n.starts_with(prefix) || n.replace('.', "-").starts_with(prefix))
    };
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            for f in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                let fp = f.path();
                if is_match(&fp) || (name == prefix && fp.extension().is_some_and(|x| x == "gguf"))
                {
                    found.push(fp);
                }
            }
        } else if is_match(&p) {
            found.push(p);
        }
    }
    found.sort();
    found
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {prefix}*.gguf under {}", dir.display()))
}

#[test]
fn vocab_only_files() {
    let dir = vocab_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("note: {} missing, skipping", dir.display());
        return;
    };
    let mut n = 0;
    for e in entries {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("gguf") {
            continue;
        }
        let f = GgufFile::open(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(f.version == 2 || f.version == 3, "{}", p.display());
        assert!(f.tensors.is_empty());
        let tokens = f.get_array("tokenizer.ggml.tokens").expect("tokens");
        assert!(
            tokens.len() > 1000,
            "{}: {} tokens",
            p.display(),
            tokens.len()
        );
        assert!(tokens.iter().all(|t| t.as_str().is_some()));
        assert!(f.get_str("tokenizer.ggml.model").is_some());
        assert!(f.architecture().is_some());
        eprintln!(
            "{}: v{} arch {:?} model {:?} {} tokens, {} keys",
            p.file_name().unwrap().to_string_lossy(),
            f.version,
            f.architecture(),
            f.get_str("tokenizer.ggml.model"),
            tokens.len(),
            f.metadata.len()
        );
        n += 1;
    }
    assert!(n >= 5, "expected the vocab files in {}", dir.display());
}

#[test]
fn qwen2_vocab_values() {
    let p = vocab_dir().join("ggml-vocab-qwen2.gguf");
    if !p.exists() {
        eprintln!("note: {} missing, skipping", p.display());
        return;
    }
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.architecture(), Some("qwen2"));
    assert_eq!(f.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(f.get_str("tokenizer.ggml.pre"), Some("qwen2"));
    let tokens = f.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens[0].as_str(), Some("!"));
    let merges = f.get_array("tokenizer.ggml.merges").unwrap();
    assert!(merges
        .iter()
        .all(|m| m.as_str().is_some_and(|s| s.contains(' '))));
}

fn type_histogram(f: &GgufFile) -> BTreeMap<&'static str, usize> {
    let mut h = BTreeMap::new();
    for t in &f.tensors {
        *h.entry(t.dtype.name()).or_default() += 1;
    }
    h
}

#[test]
fn real_models() {
    let Some(dir) = models_dir() else { return };
    let qwen = GgufFile::open(find_gguf(&dir, "qwen2.5-coder-0.5b-instruct")).unwrap();
    assert_eq!(qwen.architecture(), Some("qwen2"));
    assert_eq!(qwen.get_u32("qwen2.block_count"), Some(24));
    assert_eq!(qwen.get_u32("qwen2.embedding_length"), Some(896));
    assert_eq!(qwen.get_u32("qwen2.attention.head_count"), Some(14));
    assert_eq!(qwen.get_u32("qwen2.attention.head_count_kv"), Some(2));
    assert!(qwen
        .get_f32("qwen2.rope.freq_base")
        .is_some_and(|b| b > 1e5));
    let h = type_histogram(&qwen);
    eprintln!(
        "qwen: {} tensors {h:?}, data at {}, {} bytes",
        qwen.tensors.len(),
        qwen.data_offset,
        qwen.file_len()
    );
    for ty in ["Q4_K", "Q6_K", "F32"] {
        assert!(h.contains_key(ty), "{ty} missing from {h:?}");
    }
    let emb = qwen.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, [896, 151936]);
    assert_eq!(qwen.tensor_data(emb).len() as u64, emb.n_bytes());
    let norm = qwen.tensor("output_norm.weight").unwrap();
    assert_eq!(
        (norm.dtype, norm.dims.as_slice()),
        (GgmlType::F32, &[896u64][..])
    );
    let w: Vec<f32> = qwen
        .tensor_data(norm)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(w.iter().all(|x| x.is_finite()) && w.iter().any(|&x| x != 0.0));
    // Tensor data from the mmap starts aligned.
    assert_eq!(qwen.tensor_data(norm).as_ptr() as usize % 32, 0);
    // Quantized data views as ggml blocks straight from the mmap, with sane scales.
    for t in qwen.tensors.iter().filter(|t| t.dtype == GgmlType::Q4K) {
        let b = as_blocks::<BlockQ4K>(qwen.tensor_data(t)).expect("aligned Q4_K data");
        assert_eq!(b.len() as u64 * 256, t.n_elements());
        assert!(b
            .iter()
            .all(|b| b.d.to_f32().is_finite() && b.dmin.to_f32().is_finite()));
    }
    let q6 = qwen
        .tensors
        .iter()
        .find(|t| t.dtype == GgmlType::Q6K)
        .unwrap();
    let b = as_blocks::<BlockQ6K>(qwen.tensor_data(q6)).unwrap();
    assert!(b.iter().any(|b| b.d.to_f32() != 0.0));
    let end = qwen
        .tensors
        .iter()
        .map(|t| qwen.data_offset + t.offset + t.n_bytes())
        .max()
        .unwrap();
    assert!(end <= qwen.file_len() && qwen.file_len() - end < 64);

    let smol = GgufFile::open(find_gguf(&dir, "smollm2-135m-instruct")).unwrap();
    assert_eq!(smol.architecture(), Some("llama"));
    assert_eq!(smol.get_u32("llama.block_count"), Some(30));
    let h = type_histogram(&smol);
    eprintln!("smollm2: {} tensors {h:?}", smol.tensors.len());
    assert!(h.contains_key("Q4_1"));
    for t in &smol.tensors {
        assert_eq!(smol.tensor_data(t).len() as u64, t.n_bytes(), "{}", t.name);
    }
}
