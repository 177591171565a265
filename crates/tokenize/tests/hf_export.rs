//! `Tokenizer::hf_files`: each llama.cpp vocabulary of `shared/refdata/vocab`, written as Hugging Face tokenizer
//! files and read back with `Tokenizer::from_hf_dir`, still gives llama.cpp's ids for every test case, and
//! adds BOS exactly when the GGUF tokenizer does.

mod common;

use baimo_tokenize::Tokenizer;

fn round_trip(name: &str) {
    let gguf = Tokenizer::from_gguf_path(&common::vocab_gguf(name)).unwrap();
    let files = gguf.hf_files(Some(4096)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |f: &str, v: &serde_json::Value| {
        std::fs::write(dir.path().join(f), serde_json::to_string_pretty(v).unwrap()).unwrap()
    };
    write("tokenizer.json", &files.tokenizer);
    write("tokenizer_config.json", &files.config);
    let hf = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(hf.vocab_size(), gguf.vocab_size(), "{name}");
    for (text, want) in common::vocab_cases(name) {
        assert_eq!(
            hf.encode(&text, false, false).unwrap(),
            want,
            "{name} {text:?}"
        );
        assert_eq!(
            hf.encode(&text, true, true).unwrap(),
            gguf.encode(&text, true, true).unwrap(),
            "{name} {text:?} with BOS"
        );
        assert_eq!(hf.decode(&want, false).unwrap(), text, "{name}");
    }
    assert_eq!(hf.adds_bos(), gguf.adds_bos(), "{name}");
    // EOT and EOM are not transformers notions: from_hf_dir finds them by name, in GGUF loading's order.
    let ids = |t: &Tokenizer| {
        let s = t.special_ids();
        (s.bos, s.eos, s.eot, s.eom, s.pad, s.unk)
    };
    assert_eq!(ids(&hf), ids(&gguf), "{name}");
    assert_eq!(files.config["model_max_length"], 4096);
}

#[test]
fn llama_spm() {
    round_trip("llama-spm");
}

#[test]
fn llama_bpe() {
    round_trip("llama-bpe");
}

#[test]
fn qwen2() {
    round_trip("qwen2");
}

#[test]
fn deepseek_coder() {
    round_trip("deepseek-coder");
}
