//! `baimo merge` end to end: the merged GGUF (from a GGUF or a Hugging Face base) and the merged Hugging Face
//! folder (from a GGUF base) generate what the base does with the adapter applied, and bad requests fail with a
//! message and no output file or folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn baimo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baimo"))
        .args(args)
        .output()
        .expect("run baimo")
}

/// Greedy token ids of `baimo run ... --json`.
fn greedy(model: &str, extra: &[&str]) -> Vec<u64> {
    let mut args = vec![
        "run",
        model,
        "--raw",
        "-p",
        "The quick brown fox",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = baimo(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn merged_gguf_generates_like_the_adapter() {
    let dir = std::env::temp_dir().join(format!("baimo-merge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = root().join("fixtures/tiny/llama-gqa/llama-gqa-F32.gguf");
    let base = base.to_str().unwrap();
    let adapter = root().join("fixtures/tiny/llama-gqa/lora-all");
    let adapter = adapter.to_str().unwrap();
    let out = dir.join("merged.gguf");
    let out_s = out.to_str().unwrap();
    let o = baimo(&["merge", base, adapter, "-o", out_s, "--outtype", "keep"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let with_adapter = greedy(base, &["--adapter", adapter]);
    assert_eq!(greedy(out_s, &[]), with_adapter);
    assert_ne!(
        greedy(base, &[]),
        with_adapter,
        "the adapter must change the answer for this to mean anything"
    );

    // Exists already, no --force.
    let o = baimo(&["merge", base, adapter, "-o", out_s]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    // A folder output takes float types only.
    let o = baimo(&[
        "merge",
        base,
        adapter,
        "-o",
        dir.join("x").to_str().unwrap(),
        "--outtype",
        "q4_k",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("f32, f16, bf16"));
    assert!(!dir.join("x").exists());
    // Unknown type.
    let o = baimo(&[
        "merge",
        base,
        adapter,
        "-o",
        dir.join("y.gguf").to_str().unwrap(),
        "--outtype",
        "q9",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown output type"));
    // An adapter for a model of another shape: an error, and no file left behind.
    let other = root().join("fixtures/tiny/llama-q/llama-q-Q8_0.gguf");
    let bad = dir.join("bad.gguf");
    let o = baimo(&[
        "merge",
        other.to_str().unwrap(),
        adapter,
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("adapter"), "{err}");
    assert!(!bad.exists() && !dir.join("bad.gguf.partial").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn hugging_face_base_merges_into_gguf() {
    let dir = std::env::temp_dir().join(format!("baimo-merge-cli-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = root().join("fixtures/tiny/qwen2-gqa");
    let hf = tiny.join("hf");
    let hf_s = hf.to_str().unwrap();
    let adapter = tiny.join("lora-all");
    let adapter = adapter.to_str().unwrap();
    let out = dir.join("merged.gguf");
    let out_s = out.to_str().unwrap();
    let o = baimo(&["merge", hf_s, adapter, "-o", out_s, "--outtype", "f32"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!dir.join("merged.gguf.partial").exists());
    // Against llama.cpp's own conversion of the same folder with the adapter applied at run time: same
    // tokenizer, same weights, so the same greedy tokens.
    let converted = tiny.join("qwen2-gqa-F32.gguf");
    let converted = converted.to_str().unwrap();
    let with_adapter = greedy(converted, &["--adapter", adapter]);
    assert_eq!(greedy(out_s, &[]), with_adapter);
    assert_ne!(
        greedy(converted, &[]),
        with_adapter,
        "the adapter must change the answer"
    );

    // A bad --outtype: an error naming the types, no file.
    let bad = dir.join("bad.gguf");
    let o = baimo(&[
        "merge",
        hf_s,
        adapter,
        "-o",
        bad.to_str().unwrap(),
        "--outtype",
        "q9",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown output type"));
    assert!(!bad.exists());
    // A tokenizer llama.cpp has no pre-tokenizer for: an error that says so, no file and no partial one.
    let odd = dir.join("odd-hf");
    std::fs::create_dir_all(&odd).unwrap();
    for f in std::fs::read_dir(&hf).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, odd.join(p.file_name().unwrap())).unwrap();
    }
    let tj = odd.join("tokenizer.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|[^\p{L}]+".into();
    std::fs::write(&tj, j.to_string()).unwrap();
    let o = baimo(&[
        "merge",
        odd.to_str().unwrap(),
        adapter,
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pre-tokenizer"), "{err}");
    assert!(!bad.exists() && !dir.join("bad.gguf.partial").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gguf_base_merges_into_a_hugging_face_folder() {
    let dir = std::env::temp_dir().join(format!("baimo-merge-cli-to-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for model in ["llama-gqa", "qwen2-gqa"] {
        let tiny = root().join("fixtures/tiny").join(model);
        let base = tiny.join(format!("{model}-F32.gguf"));
        let base = base.to_str().unwrap();
        let adapter = tiny.join("lora-all");
        let adapter = adapter.to_str().unwrap();
        let out = dir.join(model);
        let out_s = out.to_str().unwrap();
        let o = baimo(&["merge", base, adapter, "-o", out_s, "--outtype", "f32"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!dir.join(format!("{model}.partial")).exists());
        for f in [
            "model.safetensors",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(out.join(f).is_file(), "{model}: {f}");
        }
        let with_adapter = greedy(base, &["--adapter", adapter]);
        assert_eq!(greedy(out_s, &[]), with_adapter, "{model}");
        assert_ne!(
            greedy(base, &[]),
            with_adapter,
            "the adapter must change the answer"
        );
        // --force replaces the folder (default type: f16).
        let o = baimo(&["merge", base, adapter, "-o", out_s, "--force"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
        assert!(cfg.contains("\"float16\""), "{cfg}");
    }
    // An adapter for a model of another shape: an error, and no folder (nor a partial one) left behind.
    let other = root().join("fixtures/tiny/llama-q/llama-q-Q8_0.gguf");
    let adapter = root().join("fixtures/tiny/llama-gqa/lora-all");
    let bad = dir.join("bad");
    let o = baimo(&[
        "merge",
        other.to_str().unwrap(),
        adapter.to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("adapter"));
    assert!(!bad.exists() && !dir.join("bad.partial").exists());
    std::fs::remove_dir_all(&dir).ok();
}
