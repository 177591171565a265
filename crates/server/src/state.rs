//! What every handler shares: the served models with their engines, the server's settings, metrics, and the
//! shutdown state (a flag that turns new generation requests into 503s, and a count of requests in flight
//! that a graceful shutdown waits for).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use baimo_engine::{EngineHandle, LoadedModel};
use baimo_models::{LoraAdapter, ServedAdapter};
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
    /// LoRA adapters served over this model, by name; requests reach them as `model: "ID:NAME"`.
    adapters: RwLock<BTreeMap<String, Adapter>>,
}

/// A LoRA adapter served over a base model.
#[derive(Clone)]
pub struct Adapter {
    pub name: String,
    pub path: PathBuf,
    pub served: Arc<ServedAdapter>,
    pub created: u64,
}

/// Why an adapter could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error(
        "adapter names are 1 to 64 characters of letters, digits, `-`, `_` and `.` (got `{0}`)"
    )]
    BadName(String),
    #[error("the model `{model}` already has an adapter `{name}`; unload it first")]
    Exists { model: String, name: String },
    #[error("{0}")]
    Load(#[from] baimo_models::ModelError),
}

impl ServedModel {
    pub fn new(id: impl Into<String>, model: Arc<LoadedModel>, engine: EngineHandle) -> Self {
        ServedModel {
            id: id.into(),
            model,
            engine,
            created: unix_now(),
            adapters: RwLock::new(BTreeMap::new()),
        }
    }

    /// Reads a PEFT adapter folder, checks it against this model and serves it as `ID:NAME`. Slow (reads and
    /// converts the weights): call it off the async runtime.
    pub fn load_adapter(&self, name: &str, dir: &Path) -> Result<Adapter, AdapterError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(AdapterError::BadName(name.to_string()));
        }
        let exists = |s: &Self| s.adapters.read().expect("adapter lock").contains_key(name);
        if exists(self) {
            return Err(AdapterError::Exists {
                model: self.id.clone(),
                name: name.into(),
            });
        }
        let lora = LoraAdapter::load(dir)?;
        let served = Arc::new(self.model.model.prepare_adapter(&lora)?);
        let entry = Adapter {
            name: name.to_string(),
            path: dir.to_path_buf(),
            served,
            created: unix_now(),
        };
        let mut map = self.adapters.write().expect("adapter lock");
        if map.contains_key(name) {
            return Err(AdapterError::Exists {
                model: self.id.clone(),
                name: name.into(),
            });
        }
        map.insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    /// Stops serving an adapter; requests already running with it finish with it. False when there was none.
    pub fn unload_adapter(&self, name: &str) -> bool {
        self.adapters
            .write()
            .expect("adapter lock")
            .remove(name)
            .is_some()
    }

    pub fn adapter(&self, name: &str) -> Option<Adapter> {
        self.adapters
            .read()
            .expect("adapter lock")
            .get(name)
            .cloned()
    }

    /// Every served adapter, by name.
    pub fn adapters(&self) -> Vec<Adapter> {
        self.adapters
            .read()
            .expect("adapter lock")
            .values()
            .cloned()
            .collect()
    }

    /// The context window of each sequence.
    pub fn ctx(&self) -> usize {
        self.engine.config().ctx
    }
}

/// What a request's `model` names: a served model, and one of its adapters when it reads `ID:NAME`.
pub struct Route<'a> {
    pub served: &'a ServedModel,
    pub adapter: Option<Adapter>,
}

impl Route<'_> {
    /// The name to answer with: `ID` or `ID:NAME`.
    pub fn id(&self) -> String {
        match &self.adapter {
            Some(a) => format!("{}:{}", self.served.id, a.name),
            None => self.served.id.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// When set, `/admin/*` requires `Authorization: Bearer <admin key>`; otherwise the API key guards it.
    pub admin_key: Option<String>,
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            admin_key: None,
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

    /// The model and adapter a request names (`ID` or `ID:ADAPTER`), or the default model.
    pub fn route(&self, name: Option<&str>) -> ApiResult<Route<'_>> {
        if let Ok(served) = self.model(name) {
            return Ok(Route {
                served,
                adapter: None,
            });
        }
        let name = name.unwrap_or_default();
        if let Some((served, adapter)) = split_adapter_id(&self.models, name) {
            return match served.adapter(adapter) {
                Some(a) => Ok(Route {
                    served,
                    adapter: Some(a),
                }),
                None => Err(ApiError::AdapterNotFound {
                    model: served.id.clone(),
                    adapter: adapter.to_string(),
                    loaded: served.adapters().into_iter().map(|a| a.name).collect(),
                }),
            };
        }
        Err(ApiError::ModelNotFound(name.to_string()))
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

/// `MODEL:ADAPTER` → (the model, `ADAPTER`). Model ids may themselves hold `:` (catalog names do), so a model's
/// id is matched as a prefix.
pub fn split_adapter_id<'m, 'n>(
    models: &'m [ServedModel],
    id: &'n str,
) -> Option<(&'m ServedModel, &'n str)> {
    models.iter().find_map(|m| {
        id.strip_prefix(m.id.as_str())
            .and_then(|r| r.strip_prefix(':'))
            .map(|a| (m, a))
    })
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
