//! The serving engine: many concurrent requests over one model.
//!
//! [`ServingEngine::start`] moves the model onto a scheduler thread; [`EngineHandle`] (cheap to clone) submits
//! requests from any thread or async task and receives a stream of [`Event`]s per request. Dropping the receiver
//! cancels the request: the scheduler notices at its next step and frees the sequence's KV blocks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;

use baimo_models::PagedKvCache;
use tokio::sync::mpsc;

use crate::{FinishReason, GenerateOptions, GeneratedToken, LoadedModel};

/// Limits of the serving engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Context window per sequence (prompt + completion), in tokens.
    pub ctx: usize,
    /// Memory budget of the paged KV cache, in MiB.
    pub kv_cache_mb: usize,
    /// Exact number of KV blocks, overriding `kv_cache_mb` (tests, tuning).
    pub kv_cache_blocks: Option<usize>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most tokens in one batched forward pass (decodes + prefill chunks).
    pub max_batch_tokens: usize,
    /// Most sequences running at once.
    pub max_running: usize,
    /// Most requests waiting for admission; beyond it [`EngineHandle::submit`] answers [`SubmitError::QueueFull`].
    pub max_queue: usize,
    /// Reuse KV blocks of identical prompt prefixes across requests.
    pub prefix_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ctx: 4096,
            kv_cache_mb: 512,
            kv_cache_blocks: None,
            block_size: 16,
            max_batch_tokens: 512,
            max_running: 32,
            max_queue: 256,
            prefix_cache: true,
        }
    }
}

/// One generation request: prompt tokens (already templated and tokenized) and how to continue them.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    /// Also return the log-probabilities of the prompt tokens (OpenAI completions `echo` + `logprobs`), with this
    /// many alternatives each. Such requests bypass the prefix cache (cached positions have no logits).
    pub prompt_logprobs: Option<usize>,
    /// A LoRA adapter prepared for this engine's model ([`baimo_models::Transformer::prepare_adapter`]);
    /// requests with different adapters, and none, share batches.
    pub adapter: Option<Arc<baimo_models::ServedAdapter>>,
}

/// Log-probability of one prompt token (the first has none).
#[derive(Debug, Clone)]
pub struct PromptTokenLogprob {
    pub id: u32,
    pub text: String,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<crate::TopLogprob>,
}

/// What a request's stream carries, in order: at most one `PromptLogprobs`, zero or more `Token`s (and at most
/// one `Text`, right before `Done`), then exactly one `Done` or `Error`. The completion text is the concatenation
/// of the `text` of every `Token` and `Text` event.
#[derive(Debug, Clone)]
pub enum Event {
    PromptLogprobs(Vec<PromptTokenLogprob>),
    /// One generated token and the text it releases (may be empty: an incomplete UTF-8 sequence or a possible
    /// stop-string prefix is held back until it resolves).
    Token {
        token: GeneratedToken,
        text: String,
    },
    /// Text released when the sequence ends without a new token (the tail held back for UTF-8 completeness or as
    /// a possible stop-string prefix, after an end-of-generation token).
    Text(String),
    Done(Usage),
    Error(String),
}

/// Token accounting of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the request queue is full ({0} waiting); retry later")]
    QueueFull(usize),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt is {prompt} tokens but the context window is {ctx}")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the prompt needs {needed} KV blocks but the cache holds only {total} (raise --kv-cache-mb)")]
    TooBigForCache { needed: usize, total: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
}

/// Live counters, read by `/metrics`.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub queue_depth: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    /// Prompt tokens looked up in / served from the prefix cache.
    pub prefix_query_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    /// Sum of batch sizes (sequences) over steps; with `steps`, the mean batch size.
    pub batched_seqs: AtomicU64,
}

/// A snapshot of [`EngineStats`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsSnapshot {
    pub queue_depth: usize,
    pub running: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub preemptions: u64,
    pub steps: u64,
    pub batched_seqs: u64,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            queue_depth: l(&self.queue_depth),
            running: l(&self.running),
            kv_blocks_total: l(&self.kv_blocks_total),
            kv_blocks_used: l(&self.kv_blocks_used),
            prefix_query_tokens: g(&self.prefix_query_tokens),
            prefix_hit_tokens: g(&self.prefix_hit_tokens),
            prompt_tokens: g(&self.prompt_tokens),
            generated_tokens: g(&self.generated_tokens),
            preemptions: g(&self.preemptions),
            steps: g(&self.steps),
            batched_seqs: g(&self.batched_seqs),
        }
    }
}

pub(crate) struct Submission {
    pub req: GenRequest,
    pub tx: mpsc::UnboundedSender<Event>,
}

pub(crate) enum Command {
    Submit(Box<Submission>),
    Shutdown,
}

/// Submits requests to a running [`ServingEngine`]. Clone freely.
#[derive(Clone)]
pub struct EngineHandle {
    tx: std_mpsc::Sender<Command>,
    stats: Arc<EngineStats>,
    cfg: Arc<EngineConfig>,
    vocab: usize,
    closing: Arc<AtomicBool>,
}

impl EngineHandle {
    /// Queues a request. Errors that the request itself causes (empty or too long prompt, bad ids) and a full
    /// queue are reported here, before anything runs.
    pub fn submit(&self, req: GenRequest) -> Result<mpsc::UnboundedReceiver<Event>, SubmitError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.prompt.len() > self.cfg.ctx {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt.len(),
                ctx: self.cfg.ctx,
            });
        }
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(SubmitError::BadToken {
                id,
                vocab: self.vocab,
            });
        }
        let total = self.stats.kv_blocks_total.load(Ordering::Relaxed);
        let needed = req.prompt.len().div_ceil(self.cfg.block_size) + 1;
        if total > 0 && needed > total {
            return Err(SubmitError::TooBigForCache { needed, total });
        }
        let depth = self.stats.queue_depth.fetch_add(1, Ordering::SeqCst);
        if depth >= self.cfg.max_queue {
            self.stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(depth));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if self
            .tx
            .send(Command::Submit(Box::new(Submission { req, tx })))
            .is_err()
        {
            self.stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(rx)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    /// Stops admitting requests; in-flight ones finish. See [`ServingEngine::shutdown`].
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }
}

/// Owns the scheduler thread.
pub struct ServingEngine {
    handle: EngineHandle,
    thread: Option<JoinHandle<()>>,
}

impl ServingEngine {
    /// Starts the scheduler thread for `model`.
    pub fn start(model: Arc<LoadedModel>, cfg: EngineConfig) -> ServingEngine {
        let (tx, rx) = std_mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let mcfg = model.model.config();
        let num_blocks = cfg
            .kv_cache_blocks
            .unwrap_or_else(|| {
                PagedKvCache::blocks_for_budget(mcfg, cfg.block_size.max(1), cfg.kv_cache_mb)
            })
            .max(1);
        stats.kv_blocks_total.store(num_blocks, Ordering::Relaxed);
        let cfg = Arc::new(cfg);
        let vocab = mcfg.vocab_size;
        let handle = EngineHandle {
            tx,
            stats: stats.clone(),
            cfg: cfg.clone(),
            vocab,
            closing: Arc::new(AtomicBool::new(false)),
        };
        let thread = std::thread::Builder::new()
            .name("baimo-scheduler".into())
            .spawn(move || crate::scheduler::run(model, cfg, stats, num_blocks, rx))
            .expect("spawning the scheduler thread");
        ServingEngine {
            handle,
            thread: Some(thread),
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Stops admitting requests, lets running and queued ones finish, and joins the scheduler thread.
    pub fn shutdown(mut self) {
        self.handle.begin_shutdown();
        let _ = self.handle.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
