//! The llama2.c reader on the real stories260K checkpoint and tok512 vocabulary
//! (shared/refdata/models; see its README.md). Expected floats were read with Python's
//! `struct` at offsets computed independently from the layout in that README.

use std::path::{Path, PathBuf};

use baimo_formats::llama2c::{read_vocab, Llama2cCheckpoint};

fn refdata() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/refdata/models");
    if d.join("stories260K.bin").exists() {
        Some(d)
    } else {
        eprintln!("note: {} missing, skipping", d.display());
        None
    }
}

fn at(c: &Llama2cCheckpoint, name: &str, i: usize) -> f32 {
    c.tensor(name)
        .unwrap_or_else(|| panic!("{name}"))
        .to_f32_vec()[i]
}

#[test]
fn stories260k() {
    let Some(dir) = refdata() else { return };
    let c = Llama2cCheckpoint::open(dir.join("stories260K.bin")).unwrap();
    let cfg = c.config;
    assert_eq!(
        (
            cfg.dim,
            cfg.hidden_dim,
            cfg.n_layers,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.vocab_size,
            cfg.seq_len
        ),
        (64, 172, 5, 8, 4, 512, 512)
    );
    assert!(cfg.shared_classifier);
    assert_eq!((cfg.head_size(), cfg.kv_dim()), (8, 32));
    assert_eq!(cfg.expected_file_len().unwrap(), 1_056_540);
    assert_eq!(c.tensor_names().count(), 1 + 5 * 9 + 1 + 1);
    // Parameters without the RoPE tables: 260,032 (README).
    let params: usize = c
        .tensor_names()
        .filter(|n| *n != "lm_head.weight")
        .map(|n| c.tensor(n).unwrap().shape.iter().product::<usize>())
        .sum();
    assert_eq!(params, 260_032);

    assert_eq!(at(&c, "model.embed_tokens.weight", 0), -0.294_748_78);
    assert_eq!(at(&c, "model.embed_tokens.weight", 64), -0.127_085_69);
    assert_eq!(
        at(&c, "model.layers.2.self_attn.q_proj.weight", 0),
        0.139_476_87
    );
    assert_eq!(
        at(&c, "model.layers.4.mlp.down_proj.weight", 64 * 172 - 1),
        -0.003_506_871_6
    );
    assert_eq!(
        at(&c, "model.layers.3.post_attention_layernorm.weight", 1),
        0.884_207_84
    );
    assert_eq!(at(&c, "model.norm.weight", 0), 2.458_309);
    assert_eq!(at(&c, "model.norm.weight", 63), 1.707_776_9);
    assert_eq!(
        c.tensor("lm_head.weight").unwrap(),
        c.tensor("model.embed_tokens.weight").unwrap()
    );
    assert_eq!(
        c.tensor("model.layers.0.self_attn.k_proj.weight")
            .unwrap()
            .shape,
        [32, 64]
    );
    assert_eq!(
        c.tensor("model.layers.0.mlp.down_proj.weight")
            .unwrap()
            .shape,
        [64, 172]
    );
}

#[test]
fn tok512() {
    let Some(dir) = refdata() else { return };
    let v = read_vocab(dir.join("tok512.bin"), 512).unwrap();
    assert_eq!(v.max_token_length, 7);
    assert_eq!(v.tokens.len(), 512);
    assert_eq!(v.tokens[0].0, b"<unk>");
    // llama2.c's tokenizer.py exports BOS/EOS with surrounding newlines.
    assert_eq!(v.tokens[1].0, b"\n<s>\n");
    assert_eq!(v.tokens[2].0, b"\n</s>\n");
    assert_eq!(v.tokens[3 + 0x41].0, b"<0x41>");
    assert!(v.tokens.iter().all(|(b, _)| b.len() <= 7));
    assert!(v.tokens[259..].iter().any(|(b, _)| b.starts_with(b" ")));
    let e = read_vocab(dir.join("missing.bin"), 512).unwrap_err();
    assert!(e.to_string().contains("missing.bin"), "{e}");
}
