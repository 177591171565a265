//! The continuous-batching engine against single-sequence generation: same tokens, whatever the company in
//! the batch, the prefix cache, preemption or chunking; and its bookkeeping (cancellation frees blocks).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use baimo_engine::{
    load, EngineConfig, Event, FinishReason, GenRequest, GenerateOptions, LoadOptions, LoadedModel,
    SamplingParams, ServingEngine, Session, Usage,
};

fn model(rel: &str) -> Arc<LoadedModel> {
    let p = common::fixtures().join("tiny").join(rel);
    Arc::new(load(&p, &LoadOptions::default()).unwrap())
}

const Q8: &str = "llama-q/llama-q-Q8_0.gguf";

fn prompt(lm: &LoadedModel, text: &str) -> Vec<u32> {
    lm.tokenizer.encode(text, true, true).unwrap()
}

fn opts(max_tokens: usize, sampling: SamplingParams) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling,
        ignore_eos: true,
        ..Default::default()
    }
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

#[derive(Debug, Default)]
struct Outcome {
    ids: Vec<u32>,
    text: String,
    usage: Option<Usage>,
    prompt_lp: Option<Vec<baimo_engine::PromptTokenLogprob>>,
    logprobs: Vec<f32>,
}

fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Outcome {
    let mut o = Outcome::default();
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { token, text } => {
                o.ids.push(token.id);
                o.logprobs.push(token.logprob);
                o.text.push_str(&text);
            }
            Event::Text(t) => o.text.push_str(&t),
            Event::PromptLogprobs(lp) => o.prompt_lp = Some(lp),
            Event::Done(u) => {
                o.usage = Some(u);
                break;
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    o
}

fn session_generate(lm: &LoadedModel, prompt: &[u32], o: &GenerateOptions) -> Vec<u32> {
    let mut s = Session::new(&lm.model, 512);
    let g = s
        .generate(&lm.model, &lm.tokenizer, prompt, o, |_| true)
        .unwrap();
    g.tokens.iter().map(|t| t.id).collect()
}

fn req(prompt: Vec<u32>, opts: GenerateOptions) -> GenRequest {
    GenRequest {
        prompt,
        opts,
        prompt_logprobs: None,
        adapter: None,
    }
}

#[test]
fn served_greedy_equals_session() {
    let lm = model(Q8);
    let p = prompt(&lm, "The quick brown fox jumps over the lazy dog.");
    let o = opts(40, SamplingParams::greedy());
    let want = session_generate(&lm, &p, &o);
    let engine = ServingEngine::start(lm.clone(), EngineConfig::default());
    let got = collect(engine.handle().submit(req(p.clone(), o)).unwrap());
    assert_eq!(got.ids, want);
    let u = got.usage.unwrap();
    assert_eq!(u.completion_tokens, 40);
    assert_eq!(u.prompt_tokens, p.len());
    assert_eq!(u.finish_reason, FinishReason::Length);
    engine.shutdown();
}

/// The batch-invariance check: a seeded request alone, then among 15 concurrent others.
#[test]
fn seeded_request_alone_equals_among_fifteen_others() {
    let lm = model(Q8);
    let cfg = EngineConfig {
        max_batch_tokens: 64, // forces chunked prefills mixed with decodes
        ..EngineConfig::default()
    };
    let engine = ServingEngine::start(lm.clone(), cfg);
    let h = engine.handle();
    let p = prompt(&lm, "Write a short story about a llama who learns to code.");
    let alone = collect(h.submit(req(p.clone(), opts(48, sampled(42)))).unwrap());
    let mut others = Vec::new();
    for i in 0..15u64 {
        let text = format!(
            "Request number {i}: {}",
            "tell me something. ".repeat(i as usize % 5 + 1)
        );
        others.push(
            h.submit(req(
                prompt(&lm, &text),
                opts(20 + i as usize * 3, sampled(i)),
            ))
            .unwrap(),
        );
        if i == 7 {
            // Ours arrives in the middle of the crowd.
            others.push(h.submit(req(p.clone(), opts(48, sampled(42)))).unwrap());
        }
    }
    let outs: Vec<Outcome> = others.into_iter().map(collect).collect();
    assert_eq!(
        outs[8].ids, alone.ids,
        "batched run differs from the lone run"
    );
    assert_eq!(outs[8].text, alone.text);
    let stats = h.stats();
    assert!(
        stats.batched_seqs > stats.steps,
        "requests never shared a batch: {stats:?}"
    );
    engine.shutdown();
}

#[test]
fn prefix_cache_hits_and_changes_nothing() {
    let lm = model(Q8);
    let history = "System: you are a helpful assistant.\nUser: hello there, how are you today? I have a long question about llamas and their habits in the Andes.\nAssistant: fine.\nUser: tell me more.";
    let p1 = prompt(&lm, history);
    let mut p2 = p1.clone();
    p2.extend(
        prompt(&lm, " And about alpacas, please.")
            .into_iter()
            .skip(1),
    );
    let o = opts(24, SamplingParams::greedy());

    let cold = ServingEngine::start(
        lm.clone(),
        EngineConfig {
            prefix_cache: false,
            ..EngineConfig::default()
        },
    );
    let uncached = collect(cold.handle().submit(req(p2.clone(), o.clone())).unwrap());
    cold.shutdown();

    let engine = ServingEngine::start(lm.clone(), EngineConfig::default());
    let h = engine.handle();
    let first = collect(h.submit(req(p1.clone(), o.clone())).unwrap());
    assert_eq!(first.usage.unwrap().cached_tokens, 0);
    let second = collect(h.submit(req(p2.clone(), o.clone())).unwrap());
    let u = second.usage.unwrap();
    let bs = EngineConfig::default().block_size;
    assert_eq!(
        u.cached_tokens,
        p1.len() / bs * bs,
        "the shared prefix's full blocks are reused"
    );
    assert!(u.cached_tokens > 0);
    assert_eq!(
        second.ids, uncached.ids,
        "cached output differs from uncached"
    );
    let s = h.stats();
    assert_eq!(s.prefix_hit_tokens, u.cached_tokens as u64);
    engine.shutdown();
}

#[test]
fn preemption_under_a_tiny_cache_keeps_outputs() {
    let lm = model(Q8);
    let cfg = EngineConfig {
        kv_cache_blocks: Some(12),
        block_size: 4,
        ..EngineConfig::default()
    };
    let engine = ServingEngine::start(lm.clone(), cfg);
    let h = engine.handle();
    let prompts: Vec<Vec<u32>> = (0..5)
        .map(|i| prompt(&lm, &format!("Sequence {i} says hi")))
        .collect();
    let rxs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            h.submit(req(p.clone(), opts(16, sampled(i as u64))))
                .unwrap()
        })
        .collect();
    let outs: Vec<Outcome> = rxs.into_iter().map(collect).collect();
    for (i, (p, o)) in prompts.iter().zip(&outs).enumerate() {
        let want = session_generate(&lm, p, &opts(16, sampled(i as u64)));
        assert_eq!(o.ids, want, "sequence {i}");
    }
    assert!(h.stats().preemptions > 0, "the cache was meant to overflow");
    assert_eq!(h.stats().kv_blocks_used, 0);
    engine.shutdown();
}

#[test]
fn cancelled_requests_free_their_blocks() {
    let lm = model(Q8);
    let engine = ServingEngine::start(lm.clone(), EngineConfig::default());
    let h = engine.handle();
    let mut rx = h
        .submit(req(
            prompt(&lm, "Count to a million:"),
            opts(100_000, sampled(1)),
        ))
        .unwrap();
    // Wait for generation to start, then hang up.
    loop {
        if let Some(Event::Token { .. }) = rx.blocking_recv() {
            break;
        }
    }
    assert!(h.stats().kv_blocks_used > 0);
    drop(rx);
    let t0 = Instant::now();
    while h.stats().kv_blocks_used > 0 || h.stats().running > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "blocks not freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    engine.shutdown();
}

#[test]
fn prompt_logprobs_match_the_full_forward() {
    let lm = model(Q8);
    let p = prompt(&lm, "Hello, world! A test of echo logprobs.");
    let engine = ServingEngine::start(
        lm.clone(),
        EngineConfig {
            max_batch_tokens: 5, // several prefill chunks
            ..EngineConfig::default()
        },
    );
    let mut r = req(p.clone(), opts(1, SamplingParams::greedy()));
    r.prompt_logprobs = Some(3);
    let out = collect(engine.handle().submit(r).unwrap());
    let lp = out.prompt_lp.expect("prompt logprobs");
    assert_eq!(lp.len(), p.len());
    assert!(lp[0].logprob.is_none());
    let mut cache = baimo_models::KvCache::new(lm.model.config(), 128);
    let all = lm
        .model
        .forward(&p, &mut cache, baimo_models::Logits::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for i in 1..p.len() {
        let want = baimo_engine::logprobs::log_softmax(&all[i - 1])[p[i] as usize];
        let got = lp[i].logprob.unwrap();
        assert!((want - got).abs() < 1e-4, "position {i}: {got} vs {want}");
        assert_eq!(lp[i].top_logprobs.len(), 3);
    }
    engine.shutdown();
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let lm = model(Q8);
    let engine = ServingEngine::start(
        lm.clone(),
        EngineConfig {
            ctx: 64,
            ..EngineConfig::default()
        },
    );
    let h = engine.handle();
    use baimo_engine::SubmitError;
    assert_eq!(
        h.submit(req(vec![], opts(1, SamplingParams::greedy())))
            .err(),
        Some(SubmitError::EmptyPrompt)
    );
    assert_eq!(
        h.submit(req(vec![1; 65], opts(1, SamplingParams::greedy())))
            .err(),
        Some(SubmitError::PromptTooLong {
            prompt: 65,
            ctx: 64
        })
    );
    assert!(matches!(
        h.submit(req(vec![1_000_000], opts(1, SamplingParams::greedy())))
            .err(),
        Some(SubmitError::BadToken { .. })
    ));
    // Prompt + completion stay within the window: 63 prompt tokens leave room for one, 64 for none.
    let out = collect(
        h.submit(req(vec![5; 63], opts(10, SamplingParams::greedy())))
            .unwrap(),
    );
    let u = out.usage.unwrap();
    assert_eq!(u.finish_reason, FinishReason::Length);
    assert_eq!(u.completion_tokens, 1);
    let out = collect(
        h.submit(req(vec![5; 64], opts(10, SamplingParams::greedy())))
            .unwrap(),
    );
    let u = out.usage.unwrap();
    assert_eq!(u.finish_reason, FinishReason::Length);
    assert_eq!(u.completion_tokens, 0);
    engine.shutdown();
}

/// Requests for two LoRA adapters and for none, submitted together so they share batches, each generate what
/// a single-sequence session with that adapter attached generates; an adapter's requests never reuse the base
/// model's cached prefix blocks (their keys and values differ).
#[test]
fn mixed_adapter_requests_equal_sessions_with_the_adapter() {
    let rel = "qwen2-gqa/qwen2-gqa-F32.gguf";
    let dirs = ["qwen2-gqa/lora-all", "qwen2-gqa/lora-qv-rs"];
    let adapters: Vec<_> = dirs
        .iter()
        .map(|d| baimo_models::LoraAdapter::load(&common::fixtures().join("tiny").join(d)).unwrap())
        .collect();
    let base = model(rel);
    let served: Vec<_> = adapters
        .iter()
        .map(|a| Arc::new(base.model.prepare_adapter(a).unwrap()))
        .collect();
    let o = opts(24, SamplingParams::greedy());
    let prompts: Vec<Vec<u32>> = [
        "The quick brown fox",
        "Hello, how are you today? I am",
        "1 2 3",
    ]
    .iter()
    .map(|t| prompt(&base, t))
    .collect();
    // References: a session over a model with the adapter attached.
    let mut want = Vec::new();
    for which in [None, Some(0), Some(1)] {
        let mut lm = load(
            &common::fixtures().join("tiny").join(rel),
            &LoadOptions::default(),
        )
        .unwrap();
        lm.model
            .set_adapter(which.map(|i: usize| &adapters[i]))
            .unwrap();
        want.push(
            prompts
                .iter()
                .map(|p| session_generate(&lm, p, &o))
                .collect::<Vec<_>>(),
        );
    }
    assert!(
        (0..prompts.len()).any(|i| want[0][i] != want[1][i]),
        "the adapter should change some greedy continuation"
    );
    let engine = ServingEngine::start(
        base.clone(),
        EngineConfig {
            block_size: 4,
            max_batch_tokens: 16,
            ..EngineConfig::default()
        },
    );
    let h = engine.handle();
    let mut rxs = Vec::new();
    for round in 0..2 {
        for (k, which) in [None, Some(0), Some(1)].into_iter().enumerate() {
            for (i, p) in prompts.iter().enumerate() {
                let mut r = req(p.clone(), o.clone());
                r.adapter = which.map(|a: usize| served[a].clone());
                rxs.push((round, k, i, h.submit(r).unwrap()));
            }
        }
    }
    for (round, k, i, rx) in rxs {
        let got = collect(rx);
        assert_eq!(
            got.ids, want[k][i],
            "adapter {k}, prompt {i}, round {round}"
        );
    }
    // The same prompt, base then adapter, one after the other: the adapter's request finds no cached blocks.
    let p = prompt(
        &base,
        "A prompt long enough to fill several KV blocks of four tokens each.",
    );
    let first = collect(h.submit(req(p.clone(), o.clone())).unwrap());
    assert_eq!(first.usage.unwrap().cached_tokens, 0);
    let again = collect(h.submit(req(p.clone(), o.clone())).unwrap());
    assert!(
        again.usage.unwrap().cached_tokens > 0,
        "the base request reuses its own prefix"
    );
    let mut r = req(p.clone(), o.clone());
    r.adapter = Some(served[0].clone());
    let with_adapter = collect(h.submit(r).unwrap());
    assert_eq!(with_adapter.usage.unwrap().cached_tokens, 0);
    let mut r = req(p, o);
    r.adapter = Some(served[0].clone());
    assert!(collect(h.submit(r).unwrap()).usage.unwrap().cached_tokens > 0);
    engine.shutdown();
}
