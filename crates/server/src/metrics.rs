//! `/metrics` in the Prometheus/OpenMetrics text format (prometheus-client). Request counts, token counts and
//! latency histograms are recorded by the HTTP layer as requests flow; the engine's live gauges (queue, running
//! batch, KV blocks, prefix-cache hits) are copied from [`baimo_engine::EngineHandle::stats`] at scrape time.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::state::ServedModel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

type HistFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Family<ModelLabels, Counter>,
    pub completion_tokens: Family<ModelLabels, Counter>,
    pub ttft: HistFamily,
    pub inter_token: HistFamily,
    queue_depth: Family<ModelLabels, Gauge>,
    running: Family<ModelLabels, Gauge>,
    kv_used: Family<ModelLabels, Gauge>,
    kv_free: Family<ModelLabels, Gauge>,
    prefix_hit_rate: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    preemptions: Family<ModelLabels, Gauge>,
    mean_batch: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    engine_generated: Family<ModelLabels, Gauge>,
    packed_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("baimo");
        let requests = Family::<RequestLabels, Counter>::default();
        let prompt_tokens = Family::<ModelLabels, Counter>::default();
        let completion_tokens = Family::<ModelLabels, Counter>::default();
        let ttft = HistFamily::new_with_constructor(latency_histogram);
        let inter_token = HistFamily::new_with_constructor(latency_histogram);
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        let running = Family::<ModelLabels, Gauge>::default();
        let kv_used = Family::<ModelLabels, Gauge>::default();
        let kv_free = Family::<ModelLabels, Gauge>::default();
        let prefix_hit_rate = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
        let preemptions = Family::<ModelLabels, Gauge>::default();
        let mean_batch = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
        let engine_generated = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of finished requests",
            prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Generated tokens of finished requests",
            completion_tokens.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request arrival to the first generated token",
            ttft.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Time between consecutive generated tokens of one sequence",
            inter_token.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for admission",
            queue_depth.clone(),
        );
        registry.register("running", "Sequences in the running batch", running.clone());
        registry.register("kv_blocks_used", "KV cache blocks in use", kv_used.clone());
        registry.register("kv_blocks_free", "KV cache blocks free", kv_free.clone());
        registry.register(
            "prefix_cache_hit_rate",
            "Share of looked-up prompt tokens served from the prefix cache",
            prefix_hit_rate.clone(),
        );
        registry.register(
            "preemptions",
            "Sequences preempted because KV blocks ran out (since start)",
            preemptions.clone(),
        );
        registry.register(
            "mean_batch_size",
            "Mean sequences per engine step (since start)",
            mean_batch.clone(),
        );
        registry.register(
            "engine_generated_tokens",
            "Tokens the engine generated since start, cancelled requests included",
            engine_generated.clone(),
        );
        let packed_bytes = Gauge::default();
        registry.register(
            "packed_weight_bytes",
            "Memory held by weights kept unpacked for the batched kernels (--pack-weights), all models",
            packed_bytes.clone(),
        );
        Metrics {
            registry,
            requests,
            prompt_tokens,
            completion_tokens,
            ttft,
            inter_token,
            queue_depth,
            running,
            kv_used,
            kv_free,
            prefix_hit_rate,
            preemptions,
            mean_batch,
            engine_generated,
            packed_bytes,
        }
    }

    pub fn count_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status,
            })
            .inc();
    }

    pub fn count_tokens(&self, model: &str, prompt: usize, completion: usize) {
        let l = label(model);
        self.prompt_tokens.get_or_create(&l).inc_by(prompt as u64);
        self.completion_tokens
            .get_or_create(&l)
            .inc_by(completion as u64);
    }

    /// Copies the engines' live counters into the gauges and encodes everything.
    pub fn render(&self, models: &[ServedModel]) -> String {
        for m in models {
            let s = m.engine.stats();
            let l = label(&m.id);
            self.queue_depth.get_or_create(&l).set(s.queue_depth as i64);
            self.running.get_or_create(&l).set(s.running as i64);
            self.kv_used.get_or_create(&l).set(s.kv_blocks_used as i64);
            self.kv_free
                .get_or_create(&l)
                .set(s.kv_blocks_total.saturating_sub(s.kv_blocks_used) as i64);
            let rate = if s.prefix_query_tokens > 0 {
                s.prefix_hit_tokens as f64 / s.prefix_query_tokens as f64
            } else {
                0.0
            };
            self.prefix_hit_rate.get_or_create(&l).set(rate);
            self.preemptions.get_or_create(&l).set(s.preemptions as i64);
            let mean = if s.steps > 0 {
                s.batched_seqs as f64 / s.steps as f64
            } else {
                0.0
            };
            self.mean_batch.get_or_create(&l).set(mean);
            self.engine_generated
                .get_or_create(&l)
                .set(s.generated_tokens as i64);
        }
        self.packed_bytes
            .set(baimo_models::layers::packed_weight_bytes() as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn label(model: &str) -> ModelLabels {
    ModelLabels {
        model: model.to_string(),
    }
}

/// Observes time to first token and inter-token latency of one sequence.
pub struct TokenClock {
    start: Instant,
    last: Option<Instant>,
    ttft: Histogram,
    inter_token: Histogram,
}

impl TokenClock {
    pub fn new(metrics: &Metrics, model: &str, start: Instant) -> Self {
        let l = label(model);
        TokenClock {
            start,
            last: None,
            ttft: metrics.ttft.get_or_create(&l).clone(),
            inter_token: metrics.inter_token.get_or_create(&l).clone(),
        }
    }

    pub fn on_token(&mut self) {
        let now = Instant::now();
        match self.last {
            None => self.ttft.observe((now - self.start).as_secs_f64()),
            Some(t) => self.inter_token.observe((now - t).as_secs_f64()),
        }
        self.last = Some(now);
    }
}
