//! The scheduler thread behind [`crate::serving::ServingEngine`].
//!
//! Version 0: one request at a time on a contiguous KV cache (the continuous-batching scheduler replaces it).

use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};

use baimo_models::{KvCache, Logits};

use crate::serving::{Command, EngineConfig, EngineStats, Event, Submission, Usage};
use crate::stepper::Stepper;
use crate::{FinishReason, LoadedModel};

pub(crate) fn run(
    model: Arc<LoadedModel>,
    cfg: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
    rx: std_mpsc::Receiver<Command>,
) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::Shutdown => break,
            Command::Submit(sub) => {
                stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
                stats.running.store(1, Ordering::Relaxed);
                if let Err(e) = serve_one(&model, &cfg, &stats, &sub) {
                    let _ = sub.tx.send(Event::Error(e.to_string()));
                }
                stats.running.store(0, Ordering::Relaxed);
            }
        }
    }
}

fn serve_one(
    lm: &LoadedModel,
    cfg: &EngineConfig,
    stats: &EngineStats,
    sub: &Submission,
) -> crate::Result<()> {
    let prompt = &sub.req.prompt;
    let mut cache = KvCache::new(lm.model.config(), cfg.ctx);
    let mut logits = lm
        .model
        .forward(prompt, &mut cache, Logits::Last)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    stats
        .prompt_tokens
        .fetch_add(prompt.len() as u64, Ordering::Relaxed);
    let mut stepper = Stepper::new(&lm.tokenizer, prompt, &sub.req.opts);
    loop {
        if sub.tx.is_closed() {
            return Ok(());
        }
        let mut out = if stepper.exhausted() {
            stepper.finish(FinishReason::Length)
        } else if cache.len() >= cfg.ctx {
            stepper.finish(FinishReason::Length)
        } else {
            stepper.step(&logits)
        };
        let last = out.token.as_ref().map(|t| t.id);
        if let Some(token) = out.token.take() {
            stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            let _ = sub.tx.send(Event::Token {
                token,
                text: std::mem::take(&mut out.text),
            });
        }
        if let Some(finish_reason) = out.finish {
            if !out.text.is_empty() {
                let _ = sub.tx.send(Event::Text(std::mem::take(&mut out.text)));
            }
            let _ = sub.tx.send(Event::Done(Usage {
                finish_reason,
                prompt_tokens: prompt.len(),
                completion_tokens: stepper.generated(),
                cached_tokens: 0,
            }));
            return Ok(());
        }
        let Some(last) = last else { return Ok(()) };
        logits = lm
            .model
            .forward(&[last], &mut cache, Logits::Last)?
            .flatten_all()?
            .to_vec1::<f32>()?;
    }
}
