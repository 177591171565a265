//! Train/serve consistency: an adapter trained by Baimo's trainer, saved in PEFT format and loaded back the way
//! `baimo run --adapter` and the server load it, generates exactly the greedy tokens that the training
//! forward pass (the code the loss and gradients came from) predicts: one decoder, three ways of running it
//! (no cache for training, a contiguous cache for `run`/`chat`, paged blocks for the server's batches).

use std::path::{Path, PathBuf};

use baimo_models::{KvCache, Logits, LoraAdapter, PagedKvCache, SeqSlice, Transformer};
use baimo_train::{Example, LoraParams, LoraSpec, Trainer, TrainerConfig};
use candle_core::{Tensor, D};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Argmax of the last position's logits (any shape ending in the vocabulary).
fn argmax_last(logits: &Tensor) -> u32 {
    let vocab = logits.dim(D::Minus1).unwrap();
    let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    let last = &v[v.len() - vocab..];
    (0..vocab).fold(0, |best, i| if last[i] > last[best] { i } else { best }) as u32
}

/// Greedy continuation through `forward_train` (no cache, the whole sequence each step).
fn greedy_train(m: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let next = argmax_last(&m.forward_train(&seq).unwrap());
        seq.push(next);
    }
    seq[prompt.len()..].to_vec()
}

/// Greedy continuation through `forward` with a KV cache (`baimo run` / `chat`).
fn greedy_cached(m: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = KvCache::new(m.config(), 128);
    let mut next = argmax_last(&m.forward(prompt, &mut cache, Logits::Last).unwrap());
    let mut out = vec![next];
    while out.len() < n {
        next = argmax_last(&m.forward(&[next], &mut cache, Logits::Last).unwrap());
        out.push(next);
    }
    out
}

/// Greedy continuation through `forward_paged` (the server's batches), the prompt in one chunk, with `adapter`
/// chosen for this sequence (as `baimo serve --adapter` serves it) or whatever adapter `m` has attached.
fn greedy_paged(
    m: &Transformer,
    prompt: &[u32],
    n: usize,
    adapter: Option<&baimo_models::ServedAdapter>,
) -> Vec<u32> {
    let mut pool = PagedKvCache::new(m.config(), 16, 16).unwrap();
    let table: Vec<u32> = (0..8).rev().collect();
    let mut seq = prompt.to_vec();
    let mut start = 0;
    let mut out = Vec::new();
    while out.len() < n {
        let s = SeqSlice {
            tokens: &seq[start..],
            start,
            block_table: &table,
            logits: Logits::Last,
            adapter,
        };
        let logits = m.forward_paged(&[s], &mut pool).unwrap();
        let next = argmax_last(&logits[0]);
        start = seq.len();
        seq.push(next);
        out.push(next);
    }
    out
}

#[test]
fn trained_adapter_serves_what_training_predicts() {
    let dir = fixtures().join("tiny/qwen2-gqa/hf");
    let mut model = Transformer::from_hf_dir(&dir).unwrap();
    let vocab = model.config().vocab_size as u32;
    let spec = LoraSpec {
        rank: 8,
        alpha: 16.0,
        ..LoraSpec::default()
    };
    let params = LoraParams::init(&model, spec, 7).unwrap();
    params.attach(&mut model, true).unwrap();
    // Teach it one continuation of the prompt, so that greedy decoding visibly follows the adapter.
    let prompt: Vec<u32> = (0..9).map(|i| (i * 13 + 5) % vocab).collect();
    let taught: Vec<u32> = (0..12).map(|i| (i * 29 + 11) % vocab).collect();
    let tokens: Vec<u32> = prompt.iter().chain(&taught).copied().collect();
    let labels: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let example = Example { tokens, labels };
    let refs = vec![&example; 2];
    let steps = 12;
    let mut trainer = Trainer::new(
        params,
        TrainerConfig {
            lr: 3e-2,
            total_steps: steps,
            ..TrainerConfig::default()
        },
    )
    .unwrap();
    for _ in 0..steps {
        trainer.step(&model, &refs).unwrap();
    }
    trainer.params.attach(&mut model, false).unwrap();
    let trained = greedy_train(&model, &prompt, 12);

    // Saved as PEFT, loaded as a user's adapter, on a fresh copy of the base.
    let out = std::env::temp_dir().join(format!("baimo-train-serve-{}", std::process::id()));
    trainer.params.save_peft(&out, "tiny/qwen2-gqa").unwrap();
    let adapter = LoraAdapter::load(&out).unwrap();
    let mut served = Transformer::from_hf_dir(&dir).unwrap();
    let base = greedy_cached(&served, &prompt, 12);
    let per_request = served.prepare_adapter(&adapter).unwrap();
    assert_eq!(
        greedy_paged(&served, &prompt, 12, Some(&per_request)),
        trained,
        "server path, adapter per request"
    );
    served.set_adapter(Some(&adapter)).unwrap();
    assert_eq!(
        greedy_cached(&served, &prompt, 12),
        trained,
        "run/chat path"
    );
    assert_eq!(
        greedy_paged(&served, &prompt, 12, None),
        trained,
        "server path, adapter attached"
    );
    assert_ne!(
        base, trained,
        "training must have changed the model for this test to mean anything"
    );
    std::fs::remove_dir_all(&out).ok();
}
