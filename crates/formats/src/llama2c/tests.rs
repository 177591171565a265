//! Synthetic checkpoints where every float is its own index, so offsets are checked exactly.

use super::*;

fn header(v: [i32; 7]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// dim 4, hidden 6, 2 layers, 2 heads, 1 kv head, vocab 5, seq_len 3; floats count up from 0.
fn tiny(shared: bool) -> Vec<u8> {
    let vocab = if shared { 5 } else { -5 };
    let mut b = header([4, 6, 2, 2, 1, vocab, 3]);
    let c = Llama2cConfig::from_header(&b).unwrap();
    let n = (c.expected_file_len().unwrap() - 28) / 4;
    b.extend((0..n).flat_map(|i| (i as f32).to_le_bytes()));
    b
}

fn first(c: &Llama2cCheckpoint, name: &str) -> (f32, Vec<usize>) {
    let t = c.tensor(name).unwrap_or_else(|| panic!("{name}"));
    (t.to_f32_vec()[0], t.shape)
}

#[test]
fn offsets_and_names() {
    let c = Llama2cCheckpoint::from_vec(tiny(true)).unwrap();
    let cfg = c.config;
    assert_eq!(
        (cfg.head_size(), cfg.kv_dim(), cfg.shared_classifier),
        (2, 2, true)
    );
    // embed 5*4=20, rms_att 2*4=8 (20..28), wq 2*16 (28..60), wk 2*8 (60..76), wv (76..92),
    // wo 2*16 (92..124), rms_ffn 2*4 (124..132), w1 2*24 (132..180), w2 (180..228),
    // w3 (228..276), norm 4 (276..280), rope 2*3 (280..286).
    assert_eq!(first(&c, "model.embed_tokens.weight"), (0.0, vec![5, 4]));
    assert_eq!(
        first(&c, "model.layers.0.input_layernorm.weight"),
        (20.0, vec![4])
    );
    assert_eq!(
        first(&c, "model.layers.1.input_layernorm.weight"),
        (24.0, vec![4])
    );
    assert_eq!(
        first(&c, "model.layers.1.self_attn.q_proj.weight"),
        (44.0, vec![4, 4])
    );
    assert_eq!(
        first(&c, "model.layers.0.self_attn.k_proj.weight"),
        (60.0, vec![2, 4])
    );
    assert_eq!(
        first(&c, "model.layers.1.self_attn.v_proj.weight"),
        (84.0, vec![2, 4])
    );
    assert_eq!(
        first(&c, "model.layers.1.self_attn.o_proj.weight"),
        (108.0, vec![4, 4])
    );
    assert_eq!(
        first(&c, "model.layers.1.post_attention_layernorm.weight"),
        (128.0, vec![4])
    );
    assert_eq!(
        first(&c, "model.layers.1.mlp.gate_proj.weight"),
        (156.0, vec![6, 4])
    );
    assert_eq!(
        first(&c, "model.layers.0.mlp.down_proj.weight"),
        (180.0, vec![4, 6])
    );
    assert_eq!(
        first(&c, "model.layers.1.mlp.up_proj.weight"),
        (252.0, vec![6, 4])
    );
    assert_eq!(first(&c, "model.norm.weight"), (276.0, vec![4]));
    assert_eq!(first(&c, "lm_head.weight"), (0.0, vec![5, 4]));
    assert_eq!(
        c.tensor("model.norm.weight").unwrap().to_f32_vec(),
        [276.0, 277.0, 278.0, 279.0]
    );
    assert!(c.tensor("model.layers.2.mlp.up_proj.weight").is_none());
    assert_eq!(c.tensor_names().count(), 1 + 2 * 9 + 1 + 1);

    let u = Llama2cCheckpoint::from_vec(tiny(false)).unwrap();
    assert!(!u.config.shared_classifier);
    assert_eq!(u.config.vocab_size, 5);
    assert_eq!(first(&u, "lm_head.weight"), (286.0, vec![5, 4]));
}

#[test]
fn size_must_match() {
    let b = tiny(true);
    let e = Llama2cCheckpoint::from_vec(b[..b.len() - 4].to_vec()).unwrap_err();
    assert!(matches!(e, FormatError::Llama2cSize { .. }), "{e}");
    let mut longer = b.clone();
    longer.extend_from_slice(&[0; 4]);
    assert!(Llama2cCheckpoint::from_vec(longer).is_err());
    for len in 0..b.len() {
        assert!(
            Llama2cCheckpoint::from_vec(b[..len].to_vec()).is_err(),
            "{len}"
        );
    }
}

#[test]
fn bad_headers() {
    let cases: [([i32; 7], &str); 7] = [
        ([0, 6, 2, 2, 1, 5, 3], "dim is 0"),
        ([4, 6, -2, 2, 1, 5, 3], "n_layers is -2"),
        ([4, 6, 2, 3, 1, 5, 3], "does not divide dim"),
        ([4, 6, 2, 2, 3, 5, 3], "n_kv_heads"),
        ([6, 6, 2, 2, 1, 5, 3], "odd"),
        ([4, 6, 2, 2, 1, i32::MIN, 3], "vocab_size"),
        ([4, 6, 2, 2, 1, 0, 3], "vocab_size is 0"),
    ];
    for (h, want) in cases {
        let e = Llama2cCheckpoint::from_vec(header(h)).unwrap_err();
        assert!(e.to_string().contains(want), "{h:?}: {e}");
    }
    // Huge sizes are a size mismatch (or overflow), never an allocation.
    let e = Llama2cCheckpoint::from_vec(header([
        i32::MAX - 1,
        i32::MAX,
        i32::MAX,
        2,
        2,
        i32::MAX,
        i32::MAX,
    ]))
    .unwrap_err();
    assert!(
        matches!(
            e,
            FormatError::Llama2cSize { .. } | FormatError::BadLlama2c { .. }
        ),
        "{e}"
    );
    let e = Llama2cCheckpoint::from_vec(vec![1, 2, 3]).unwrap_err();
    assert!(matches!(e, FormatError::Truncated { .. }), "{e}");
}

fn vocab_bytes() -> Vec<u8> {
    let mut b = 3i32.to_le_bytes().to_vec();
    for (s, score) in [(&b"<s>"[..], 0.0f32), (b" a", -1.5), (b"", 2.0)] {
        b.extend_from_slice(&score.to_le_bytes());
        b.extend_from_slice(&(s.len() as i32).to_le_bytes());
        b.extend_from_slice(s);
    }
    b
}

#[test]
fn vocab() {
    let b = vocab_bytes();
    let v = parse_vocab(&b, 3).unwrap();
    assert_eq!(v.max_token_length, 3);
    assert_eq!(
        v.tokens,
        [
            (b"<s>".to_vec(), 0.0),
            (b" a".to_vec(), -1.5),
            (vec![], 2.0)
        ]
    );
    assert_eq!(parse_vocab(&b, 2).unwrap().tokens.len(), 2);
    assert!(parse_vocab(&b, 4).is_err());
    let mut short = b.clone();
    short.extend_from_slice(&[0; 6]);
    assert!(matches!(
        parse_vocab(&short, 4),
        Err(FormatError::Truncated { .. })
    ));
    assert!(matches!(
        parse_vocab(&b, usize::MAX),
        Err(FormatError::BadVocab { .. })
    ));
    for len in 0..b.len() {
        assert!(parse_vocab(&b[..len], 3).is_err(), "{len}");
    }
    let mut neg = b.clone();
    neg[8..12].copy_from_slice(&(-1i32).to_le_bytes());
    assert!(parse_vocab(&neg, 3)
        .unwrap_err()
        .to_string()
        .contains("length -1"));
}
