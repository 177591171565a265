//! What every handler shares: the served models with their engines, the server's settings, metrics, and the
//! shutdown state (a flag that turns new generation requests into 503s, and a count of requests in flight
//! that a graceful shutdown waits for).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baimo_engine::{EngineHandle, LoadedModel};
use tokio::sync::Notify;

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;

/// One model behind the API, with its own [`baimo_engine::ServingEngine`].
pub struct ServedModel {
    /// The name clients pass as `model`.
    pub id: String,
    pub model: Arc<LoadedModel>,
    pub engine: EngineHandle,
    /// Unix time the model was loaded (OpenAI's `created`).
    pub created: u64,
}

impl ServedModel {
    pub fn new(id: impl Into<String>, model: Arc<LoadedModel>, engine: EngineHandle) -> Self {
        ServedModel {
            id: id.into(),
            model,
            engine,
            created: unix_now(),
        }
    }

    /// The context window of each sequence.
    pub fn ctx(&self) -> usize {
        self.engine.config().ctx
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            max_body_bytes: 8 << 20,
        }
    }
}

pub struct AppState {
    /// The first is the default model (used when a request names none).
    pub models: Vec<ServedModel>,
    pub cfg: ServerConfig,
    pub metrics: Metrics,
    /// OpenAI's `system_fingerprint`: which build served the answer.
    pub fingerprint: String,
    closing: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl AppState {
    pub fn new(models: Vec<ServedModel>, cfg: ServerConfig) -> Arc<Self> {
        Arc::new(AppState {
            models,
            cfg,
            metrics: Metrics::new(),
            fingerprint: format!("fp_baimo_{}", env!("CARGO_PKG_VERSION").replace('.', "_")),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// The model a request names, or the default one.
    pub fn model(&self, name: Option<&str>) -> ApiResult<&ServedModel> {
        match name {
            None | Some("") => self
                .models
                .first()
                .ok_or_else(|| ApiError::ModelNotFound(String::new())),
            Some(n) => self
                .models
                .iter()
                .find(|m| m.id == n)
                .ok_or_else(|| ApiError::ModelNotFound(n.to_string())),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Stops admitting generation requests (they get 503) and tells every engine to stop admitting.
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for m in &self.models {
            m.engine.begin_shutdown();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no generation request is in flight, or `timeout` passes; true when drained.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

/// Counts a generation request as in flight until dropped (for streams: until the stream ends or the client
/// goes away).
pub struct InFlight(Arc<AppState>);

impl InFlight {
    pub fn new(state: &Arc<AppState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random id with OpenAI's prefixes (`chatcmpl-`, `cmpl-`).
pub fn new_id(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let s: String = (0..24)
        .map(|_| {
            let c = rng.gen_range(0..62u8);
            match c {
                0..=9 => (b'0' + c) as char,
                10..=35 => (b'a' + c - 10) as char,
                _ => (b'A' + c - 36) as char,
            }
        })
        .collect();
    format!("{prefix}{s}")
}
