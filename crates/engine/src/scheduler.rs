//! The continuous-batching scheduler behind [`crate::serving::ServingEngine`].
//!
//! Every step it (1) takes new requests and drops cancelled ones, (2) admits waiting requests first-come
//! first-served while KV blocks allow, reusing cached prefix blocks, (3) builds one batch of every running
//! sequence's next tokens, decodes first and then prompt chunks up to the token budget, preempting the newest
//! sequence when blocks run out (it is recomputed later, its sampler state kept), (4) runs one
//! [`Transformer::forward_paged`] pass, and (5) samples, streams and retires sequences.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};

use baimo_models::{Logits, PagedKvCache, SeqSlice};
use rayon::prelude::*;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::blocks::{block_hash, chain_root, BlockManager};
use crate::logprobs::{log_softmax, top_logprobs};
use crate::serving::{
    Command, EngineConfig, EngineStats, Event, PromptTokenLogprob, Submission, Usage,
};
use crate::stepper::{piece, StepOutput, Stepper};
use crate::{FinishReason, GenRequest, LoadedModel, TopLogprob};

struct Seq<'m> {
    tx: mpsc::UnboundedSender<Event>,
    req: GenRequest,
    /// Prompt plus generated tokens; the last one's KV is not computed yet while the sequence runs.
    tokens: Vec<u32>,
    /// Positions whose KV is in `blocks`.
    computed: usize,
    blocks: Vec<u32>,
    /// Full blocks whose hash is registered in the prefix cache.
    hashed: usize,
    last_hash: Option<u64>,
    stepper: Stepper<'m>,
    /// Where this sequence's prefix-cache hash chain starts ([`chain_root`] of its adapter).
    root: Option<u64>,
    cached_tokens: usize,
    prompt_lp: Vec<PromptTokenLogprob>,
}

impl Seq<'_> {
    fn prompt_len(&self) -> usize {
        self.req.prompt.len()
    }
    fn send(&self, e: Event) {
        let _ = self.tx.send(e);
    }
}

struct Scheduler<'m> {
    lm: &'m LoadedModel,
    cfg: &'m EngineConfig,
    stats: &'m EngineStats,
    kv: PagedKvCache,
    blocks: BlockManager,
    waiting: VecDeque<Seq<'m>>,
    running: Vec<Seq<'m>>,
}

pub(crate) fn run(
    model: Arc<LoadedModel>,
    cfg: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
    num_blocks: usize,
    rx: std_mpsc::Receiver<Command>,
) {
    let kv = match PagedKvCache::new(model.model.config(), cfg.block_size, num_blocks) {
        Ok(kv) => kv,
        Err(e) => {
            // Nothing can run: answer every request with the reason.
            warn!("KV cache: {e}");
            while let Ok(Command::Submit(sub)) = rx.recv() {
                stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
                let _ = sub.tx.send(Event::Error(e.to_string()));
            }
            return;
        }
    };
    let mut s = Scheduler {
        lm: &model,
        cfg: &cfg,
        stats: &stats,
        kv,
        blocks: BlockManager::new(num_blocks, cfg.block_size),
        waiting: VecDeque::new(),
        running: Vec::new(),
    };
    s.publish();
    let mut open = true;
    loop {
        // 1. Intake: block only when idle.
        if s.running.is_empty() && s.waiting.is_empty() {
            if !open {
                break;
            }
            match rx.recv() {
                Ok(cmd) => open &= s.take(cmd),
                Err(_) => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => open &= s.take(cmd),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        s.drop_cancelled();
        s.admit();
        if !s.running.is_empty() {
            s.step();
        }
        s.publish();
    }
}

impl<'m> Scheduler<'m> {
    /// Handles one command; false once shutdown was asked for (queued work still finishes).
    fn take(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Shutdown => false,
            Command::Submit(sub) => {
                let Submission { req, tx } = *sub;
                let stepper = Stepper::new(&self.lm.tokenizer, &req.prompt, &req.opts);
                let root = chain_root(req.adapter.as_ref().map(|a| a.id()));
                self.waiting.push_back(Seq {
                    root,
                    tx,
                    tokens: req.prompt.clone(),
                    req,
                    computed: 0,
                    blocks: Vec::new(),
                    hashed: 0,
                    last_hash: None,
                    stepper,
                    cached_tokens: 0,
                    prompt_lp: Vec::new(),
                });
                true
            }
        }
    }

    fn publish(&self) {
        let st = self.stats;
        st.queue_depth.store(self.waiting.len(), Ordering::Relaxed);
        st.running.store(self.running.len(), Ordering::Relaxed);
        st.kv_blocks_total
            .store(self.blocks.total(), Ordering::Relaxed);
        st.kv_blocks_used
            .store(self.blocks.used(), Ordering::Relaxed);
    }

    fn free_blocks(&mut self, seq: &mut Seq) {
        for b in seq.blocks.drain(..) {
            self.blocks.release(b);
        }
        seq.computed = 0;
        seq.hashed = 0;
        seq.last_hash = None;
    }

    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].tx.is_closed() {
                let mut seq = self.running.remove(i);
                debug!("request cancelled after {} tokens", seq.stepper.generated());
                self.free_blocks(&mut seq);
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|s| !s.tx.is_closed());
    }

    /// Admits waiting sequences in arrival order while their uncached tokens fit in free blocks.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_running {
            let Some(mut seq) = self.waiting.pop_front() else {
                return;
            };
            if seq.stepper.exhausted() {
                // max_tokens = 0: nothing to generate.
                let out = seq.stepper.finish(FinishReason::Length);
                self.finish(seq, out.text, FinishReason::Length);
                continue;
            }
            // Reuse cached full blocks, but always leave at least one token to compute (its logits are needed).
            let mut matched = Vec::new();
            if self.cfg.prefix_cache && seq.req.prompt_logprobs.is_none() {
                let limit = seq.tokens.len() - 1;
                let full = limit / self.cfg.block_size * self.cfg.block_size;
                matched = self.blocks.match_prefix(seq.root, &seq.tokens[..full]);
            }
            let cached = matched.len() * self.cfg.block_size;
            let need = seq.tokens.len().div_ceil(self.cfg.block_size) - matched.len();
            // Keep one block per running sequence in reserve so admitted work can keep decoding.
            let reserve = self.running.len().min(self.blocks.total() / 8);
            if self.running.is_empty() && need > self.blocks.available() {
                // Even the whole cache cannot hold it (a preempted sequence that grew): end it here.
                for b in matched {
                    self.blocks.release(b);
                }
                let out = seq.stepper.finish(FinishReason::Length);
                self.finish(seq, out.text, FinishReason::Length);
                continue;
            }
            if need + reserve > self.blocks.available() {
                for b in matched {
                    self.blocks.release(b);
                }
                self.waiting.push_front(seq);
                return;
            }
            if seq.stepper.generated() == 0 && seq.cached_tokens == 0 {
                self.stats
                    .prefix_query_tokens
                    .fetch_add(seq.prompt_len() as u64, Ordering::Relaxed);
                self.stats
                    .prefix_hit_tokens
                    .fetch_add(cached as u64, Ordering::Relaxed);
                seq.cached_tokens = cached;
            }
            seq.hashed = matched.len();
            seq.last_hash = None;
            if !matched.is_empty() {
                let mut parent = seq.root;
                for chunk in seq.tokens[..cached].chunks_exact(self.cfg.block_size) {
                    parent = Some(block_hash(parent, chunk));
                }
                seq.last_hash = parent;
            }
            seq.blocks = matched;
            seq.computed = cached;
            self.running.push(seq);
        }
    }

    /// Makes sure `running[i]` has blocks for `upto` positions, preempting the newest other sequences if needed.
    /// False when even that cannot help (then `running[i]` itself should wait).
    fn ensure_blocks(&mut self, i: usize, upto: usize) -> bool {
        let need = upto.div_ceil(self.cfg.block_size);
        while self.running[i].blocks.len() < need {
            match self.blocks.allocate() {
                Some(b) => self.running[i].blocks.push(b),
                None => {
                    let victim = self.running.len() - 1;
                    if victim == i {
                        return false;
                    }
                    self.preempt(victim);
                }
            }
        }
        true
    }

    /// Frees a running sequence's blocks and puts it back at the head of the queue; it is recomputed later.
    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        self.free_blocks(&mut seq);
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        debug!("preempted a sequence at {} tokens", seq.tokens.len());
        self.waiting.push_front(seq);
    }

    fn step(&mut self) {
        // Plan: (index in running, number of tokens) with decodes (1 token) before prompt chunks.
        let mut budget = self.cfg.max_batch_tokens.max(1);
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| self.running[i].tokens.len() - self.running[i].computed > 1);
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut idx = 0;
        while idx < order.len() && budget > 0 {
            let i = order[idx];
            idx += 1;
            if i >= self.running.len() {
                continue;
            }
            let s = &self.running[i];
            let n = (s.tokens.len() - s.computed).min(budget);
            let upto = s.computed + n;
            if !self.ensure_blocks(i, upto) {
                // It is the newest sequence and nothing else can be freed for it.
                if self.running.len() == 1 {
                    // Alone and still out of blocks: the cache cannot hold it any longer.
                    let mut seq = self.running.remove(i);
                    let out = seq.stepper.finish(FinishReason::Length);
                    let text = out.text;
                    self.free_blocks(&mut seq);
                    self.finish(seq, text, FinishReason::Length);
                } else {
                    self.preempt(i);
                }
                break;
            }
            plan.push((i, n));
            budget -= n;
        }
        // Preemption removes the newest sequences, which the plan never lists before older ones; drop stale
        // entries defensively.
        plan.retain(|&(i, _)| i < self.running.len());
        if plan.is_empty() {
            return;
        }

        let slices: Vec<SeqSlice> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                let wants_all = s.req.prompt_logprobs.is_some() && s.computed < s.prompt_len();
                SeqSlice {
                    tokens: &s.tokens[s.computed..s.computed + n],
                    start: s.computed,
                    block_table: &s.blocks,
                    logits: if wants_all { Logits::All } else { Logits::Last },
                    adapter: s.req.adapter.as_deref(),
                }
            })
            .collect();
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .batched_seqs
            .fetch_add(slices.len() as u64, Ordering::Relaxed);
        let result = self.lm.model.forward_paged(&slices, &mut self.kv);
        drop(slices);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                warn!("forward pass failed: {e}");
                let mut failed: Vec<usize> = plan.iter().map(|&(i, _)| i).collect();
                failed.sort_unstable_by(|a, b| b.cmp(a));
                for i in failed {
                    let mut seq = self.running.remove(i);
                    self.free_blocks(&mut seq);
                    seq.send(Event::Error(format!("forward pass failed: {e}")));
                }
                return;
            }
        };

        // 1. Bookkeeping, in order: positions computed, prefix-cache blocks, prompt log-probabilities; the
        //    last row of every sequence that now samples a token.
        let mut done: Vec<usize> = Vec::new();
        let mut last_rows: Vec<Option<Vec<f32>>> = vec![None; self.running.len()];
        for (&(i, n), l) in plan.iter().zip(logits) {
            let mut rows = match l
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.to_vec2::<f32>())
            {
                Ok(r) => r,
                Err(e) => {
                    self.running[i].send(Event::Error(format!("reading logits: {e}")));
                    done.push(i);
                    continue;
                }
            };
            let seq = &mut self.running[i];
            let before = seq.computed;
            seq.computed += n;
            self.register_full_blocks(i);
            let seq = &mut self.running[i];
            if seq.req.prompt_logprobs.is_some() && before < seq.prompt_len() {
                collect_prompt_logprobs(&self.lm.tokenizer, seq, before, &rows);
            }
            if seq.computed < seq.tokens.len() {
                continue; // more prompt to prefill
            }
            if before < seq.prompt_len() {
                self.stats.prompt_tokens.fetch_add(
                    (seq.prompt_len() - seq.cached_tokens) as u64,
                    Ordering::Relaxed,
                );
                if seq.req.prompt_logprobs.is_some() && seq.stepper.generated() == 0 {
                    let lp = std::mem::take(&mut seq.prompt_lp);
                    seq.send(Event::PromptLogprobs(lp));
                }
            }
            last_rows[i] = rows.pop();
        }

        // 2. Sampling (penalties, top-k/p over the whole vocabulary, detokenization, stop strings): each
        //    sequence on its own, so the sequences of a batch are sampled in parallel.
        let ctx = self.cfg.ctx;
        let outs: Vec<(usize, StepOutput)> = self
            .running
            .par_iter_mut()
            .zip(last_rows.par_iter())
            .enumerate()
            .filter_map(|(i, (seq, last))| {
                let last = last.as_ref()?;
                // Prompt plus completion never exceed the context window (as in `Session::generate`).
                let out = if seq.computed >= ctx {
                    seq.stepper.finish(FinishReason::Length)
                } else {
                    seq.stepper.step(last)
                };
                Some((i, out))
            })
            .collect();

        // 3. Stream the results and retire finished sequences.
        for (i, mut out) in outs {
            let seq = &mut self.running[i];
            if let Some(token) = out.token.take() {
                seq.tokens.push(token.id);
                self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
                seq.send(Event::Token {
                    token,
                    text: std::mem::take(&mut out.text),
                });
            }
            let finish = out.finish.map(|f| (f, out.text));
            if let Some((f, tail)) = finish {
                if !tail.is_empty() {
                    seq.send(Event::Text(tail));
                }
                seq.send(Event::Done(usage(seq, f)));
                done.push(i);
            }
        }
        done.sort_unstable_by(|a, b| b.cmp(a));
        done.dedup();
        for i in done {
            let mut seq = self.running.remove(i);
            self.free_blocks(&mut seq);
        }
    }

    /// Registers the sequence's newly completed full blocks in the prefix cache.
    fn register_full_blocks(&mut self, i: usize) {
        if !self.cfg.prefix_cache {
            return;
        }
        let bs = self.cfg.block_size;
        let seq = &mut self.running[i];
        while (seq.hashed + 1) * bs <= seq.computed {
            let toks = &seq.tokens[seq.hashed * bs..(seq.hashed + 1) * bs];
            let parent = if seq.hashed == 0 {
                seq.root
            } else {
                seq.last_hash
            };
            let h = block_hash(parent, toks);
            self.blocks.register(seq.blocks[seq.hashed], h, toks);
            seq.last_hash = Some(h);
            seq.hashed += 1;
        }
    }

    fn finish(&mut self, mut seq: Seq, tail: String, f: FinishReason) {
        if !tail.is_empty() {
            seq.send(Event::Text(tail));
        }
        seq.send(Event::Done(usage(&seq, f)));
        self.free_blocks(&mut seq);
    }
}

fn usage(seq: &Seq, finish_reason: FinishReason) -> Usage {
    Usage {
        finish_reason,
        prompt_tokens: seq.prompt_len(),
        completion_tokens: seq.stepper.generated(),
        cached_tokens: seq.cached_tokens,
    }
}

/// Log-probabilities of prompt tokens `before+1 ..` from the rows of a prefill chunk starting at `before`.
fn collect_prompt_logprobs(
    tok: &baimo_tokenize::Tokenizer,
    seq: &mut Seq,
    before: usize,
    rows: &[Vec<f32>],
) {
    let k = seq.req.prompt_logprobs.unwrap_or(0);
    if before == 0 {
        let id = seq.tokens[0];
        seq.prompt_lp.push(PromptTokenLogprob {
            id,
            text: piece(tok, id),
            logprob: None,
            top_logprobs: Vec::new(),
        });
    }
    for (r, row) in rows.iter().enumerate() {
        let pos = before + r + 1;
        if pos >= seq.prompt_len() {
            break;
        }
        let id = seq.tokens[pos];
        let lp = log_softmax(row);
        seq.prompt_lp.push(PromptTokenLogprob {
            id,
            text: piece(tok, id),
            logprob: lp.get(id as usize).copied(),
            top_logprobs: top_logprobs(&lp, k)
                .into_iter()
                .map(|(id, logprob)| TopLogprob {
                    id,
                    text: piece(tok, id),
                    logprob,
                })
                .collect(),
        });
    }
}
