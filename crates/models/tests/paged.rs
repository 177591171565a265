//! The paged, batched forward pass against the single-sequence one, and its batch invariance: a sequence's
//! logits are bit-identical whether it runs alone, beside other sequences, or split into different chunks.

use std::path::{Path, PathBuf};

use baimo_formats::gguf::GgufFile;
use baimo_models::{KvCache, Logits, PagedKvCache, SeqSlice, Transformer};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny")
        .join(rel)
}

fn load(rel: &str) -> Transformer {
    let g = GgufFile::open(fixture(rel)).unwrap();
    Transformer::from_gguf(&g).unwrap()
}

const MODELS: &[&str] = &[
    "llama-q/llama-q-Q4_0.gguf",
    "llama-q/llama-q-Q8_0.gguf",
    "llama-q/llama-q-Q4_K_M.gguf",
    "qwen2-q/qwen2-q-Q4_K_M.gguf",
    "llama-gqa/llama-gqa-F32.gguf",
    "llama-mha-rope3/llama-mha-rope3-F16.gguf",
];

fn tokens(seed: u32, n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97)) % vocab as u32)
        .collect()
}

fn to_vec(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Block tables that interleave three sequences' blocks in the pool, so reads really go through the table.
fn tables(n_seqs: usize, blocks_each: usize) -> Vec<Vec<u32>> {
    (0..n_seqs)
        .map(|s| {
            (0..blocks_each)
                .map(|b| (b * n_seqs + (n_seqs - 1 - s)) as u32)
                .collect()
        })
        .collect()
}

#[test]
fn paged_matches_contiguous() {
    for rel in MODELS {
        let m = load(rel);
        let vocab = m.config().vocab_size;
        let prompt = tokens(1, 37, vocab);
        let mut cache = KvCache::new(m.config(), 256);
        let want = to_vec(&m.forward(&prompt, &mut cache, Logits::All).unwrap());

        let mut pool = PagedKvCache::new(m.config(), 4, 64).unwrap();
        let table = &tables(3, 20)[1];
        // Prefill in two chunks, then the rest one token at a time.
        let mut got = Vec::new();
        let mut pos = 0;
        for chunk in [&prompt[..20], &prompt[20..30]]
            .into_iter()
            .chain(prompt[30..].chunks(1))
        {
            let s = SeqSlice {
                tokens: chunk,
                start: pos,
                block_table: table,
                logits: Logits::All,
                adapter: None,
            };
            got.extend(to_vec(&m.forward_paged(&[s], &mut pool).unwrap()[0]));
            pos += chunk.len();
        }
        let range = want.iter().fold(0f32, |a, &x| a.max(x.abs())).max(1.0);
        let vocab = m.config().vocab_size;
        let row_err: Vec<f32> = want
            .chunks(vocab)
            .zip(got.chunks(vocab))
            .map(|(w, g)| w.iter().zip(g).fold(0f32, |a, (x, y)| a.max((x - y).abs())))
            .collect();
        let worst = row_err.iter().fold(0f32, |a, &e| a.max(e));
        let off = row_err.iter().filter(|&&e| e > 1e-4 * range).count();
        println!(
            "{rel}: paged vs contiguous max|err| {worst:.2e} (range {range:.2}), {off} of {} rows above 1e-4",
            row_err.len()
        );
        // Float models: every row agrees to float noise. Quantized models quantize each activation row to
        // int8, so float noise of 1e-7 (attention summed in another order) can flip one rounding and move a
        // row by a quantization step: allow that on a few rows, bounded like the llama.cpp comparison.
        let quantized = !rel.contains("F32") && !rel.contains("F16");
        if quantized {
            assert!(off <= 2, "{rel}: {off} rows differ");
            assert!(worst <= 2e-2 * range, "{rel}: {worst}");
        } else {
            assert_eq!(off, 0, "{rel}: {worst}");
        }
    }
}

/// A 300-token prompt in one single-sequence pass (its attention runs in chunks of 128 query rows) against the
/// paged pass, whose per-row attention never chunks, fed in pieces that straddle the chunk boundaries.
#[test]
fn long_prompt_attention_chunks_match_paged() {
    for rel in [
        "llama-gqa/llama-gqa-F32.gguf",
        "llama-mha-rope3/llama-mha-rope3-F16.gguf",
    ] {
        let m = load(rel);
        let vocab = m.config().vocab_size;
        let prompt = tokens(5, 300, vocab);
        let mut cache = KvCache::new(m.config(), 512);
        let want = to_vec(&m.forward(&prompt, &mut cache, Logits::All).unwrap());

        let mut pool = PagedKvCache::new(m.config(), 4, 80).unwrap();
        let table: Vec<u32> = (0..75).rev().collect();
        let mut got = Vec::new();
        let mut pos = 0;
        for n in [100, 60, 140] {
            let s = SeqSlice {
                tokens: &prompt[pos..pos + n],
                start: pos,
                block_table: &table,
                logits: Logits::All,
                adapter: None,
            };
            got.extend(to_vec(&m.forward_paged(&[s], &mut pool).unwrap()[0]));
            pos += n;
        }
        assert_eq!(want.len(), got.len());
        let range = want.iter().fold(0f32, |a, &x| a.max(x.abs())).max(1.0);
        let worst = want
            .iter()
            .zip(&got)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        println!("{rel}: 300-token prompt, max|err| {worst:.2e} (range {range:.2})");
        assert!(worst <= 1e-4 * range, "{rel}: {worst}");
    }
}

#[test]
fn batch_invariance() {
    let mut failed = Vec::new();
    for rel in MODELS {
        let m = load(rel);
        let vocab = m.config().vocab_size;
        let a = tokens(2, 29, vocab);
        let b = tokens(3, 17, vocab);
        let c = tokens(4, 41, vocab);
        let t = tables(3, 16);

        // A alone, whole prompt.
        let mut pool = PagedKvCache::new(m.config(), 4, 48).unwrap();
        let alone = to_vec(
            &m.forward_paged(
                &[SeqSlice {
                    tokens: &a,
                    start: 0,
                    block_table: &t[0],
                    logits: Logits::Last,
                    adapter: None,
                }],
                &mut pool,
            )
            .unwrap()[0],
        );

        // A split 11 + 18 beside B and C in different positions of the batch.
        let mut pool = PagedKvCache::new(m.config(), 4, 48).unwrap();
        let first = m
            .forward_paged(
                &[
                    SeqSlice {
                        tokens: &b,
                        start: 0,
                        block_table: &t[1],
                        logits: Logits::Last,
                        adapter: None,
                    },
                    SeqSlice {
                        tokens: &a[..11],
                        start: 0,
                        block_table: &t[0],
                        logits: Logits::Last,
                        adapter: None,
                    },
                ],
                &mut pool,
            )
            .unwrap();
        assert_eq!(first.len(), 2);
        let second = m
            .forward_paged(
                &[
                    SeqSlice {
                        tokens: &c,
                        start: 0,
                        block_table: &t[2],
                        logits: Logits::All,
                        adapter: None,
                    },
                    SeqSlice {
                        tokens: &a[11..],
                        start: 11,
                        block_table: &t[0],
                        logits: Logits::Last,
                        adapter: None,
                    },
                    SeqSlice {
                        tokens: &b[..1],
                        start: 17,
                        block_table: &t[1],
                        logits: Logits::Last,
                        adapter: None,
                    },
                ],
                &mut pool,
            )
            .unwrap();
        assert_eq!(second[0].dims(), &[41, vocab]);
        let together = to_vec(&second[1]);
        let diff = alone
            .iter()
            .zip(&together)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        println!("{rel}: alone vs batched max|diff| {diff:e}");
        if alone != together {
            failed.push(*rel);
        }
    }
    assert!(
        failed.is_empty(),
        "logits changed with the batch around the sequence: {failed:?}"
    );
}

#[test]
fn bad_block_tables_are_errors() {
    let m = load("llama-q/llama-q-Q4_0.gguf");
    let mut pool = PagedKvCache::new(m.config(), 4, 8).unwrap();
    let toks = [1u32, 2, 3, 4, 5];
    let short = SeqSlice {
        tokens: &toks,
        start: 0,
        block_table: &[0],
        logits: Logits::Last,
        adapter: None,
    };
    assert!(m.forward_paged(&[short], &mut pool).is_err());
    let outside = SeqSlice {
        tokens: &toks,
        start: 0,
        block_table: &[0, 99],
        logits: Logits::Last,
        adapter: None,
    };
    assert!(m.forward_paged(&[outside], &mut pool).is_err());
    let bad_id = SeqSlice {
        tokens: &[100_000],
        start: 0,
        block_table: &[0],
        logits: Logits::Last,
        adapter: None,
    };
    assert!(m.forward_paged(&[bad_id], &mut pool).is_err());
    assert!(m.forward_paged(&[], &mut pool).is_err());
}

/// Weights kept packed for the batched kernels (`set_pack_weights`, the server's `--pack-weights`) give the
/// same logits, bit for bit, as packing them per product: a batch of three sequences (decode rows and prompt
/// chunks, so both kernel paths run) through fresh models with packing off and on.
#[test]
fn packed_weights_give_the_same_logits() {
    use baimo_models::layers::{packed_weight_bytes, set_pack_weights};
    for rel in &MODELS[..4] {
        let run = |pack: bool| {
            set_pack_weights(pack);
            let m = load(rel);
            set_pack_weights(false);
            let vocab = m.config().vocab_size;
            let seqs = [
                tokens(5, 9, vocab),
                tokens(6, 2, vocab),
                tokens(7, 1, vocab),
            ];
            let t = tables(3, 4);
            let mut pool = PagedKvCache::new(m.config(), 4, 12).unwrap();
            let mut out = Vec::new();
            // Two steps: the prompts, then one decode row each (three rows: the packed kernels).
            for step in 0..2 {
                set_pack_weights(pack);
                let next: Vec<Vec<u32>> = seqs.iter().map(|s| vec![s[0] ^ 1]).collect();
                let slices: Vec<SeqSlice> = (0..3)
                    .map(|i| SeqSlice {
                        tokens: if step == 0 { &seqs[i] } else { &next[i] },
                        start: if step == 0 { 0 } else { seqs[i].len() },
                        block_table: &t[i],
                        logits: Logits::Last,
                        adapter: None,
                    })
                    .collect();
                let logits = m.forward_paged(&slices, &mut pool).unwrap();
                set_pack_weights(false);
                out.extend(logits.iter().flat_map(to_vec));
            }
            out
        };
        let plain = run(false);
        let before = packed_weight_bytes();
        let packed = run(true);
        println!(
            "{rel}: {} bytes packed",
            packed_weight_bytes().saturating_sub(before)
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&plain), bits(&packed), "{rel}");
    }
}
