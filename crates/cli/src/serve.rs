//! `baimo serve`: load the models, start one serving engine each, and run the OpenAI-compatible server until
//! SIGTERM or Ctrl-C (then: stop admitting, finish what is in flight, exit 0; a second signal exits at once).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baimo_engine::{EngineConfig, LoadOptions, ServingEngine};
use baimo_server::{AppState, ServedModel, ServerConfig};
use baimo_store::ModelStore;
use clap::Args;

use crate::commands::resolve_model;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The default model: a path or a catalog name, pulled on first use. Without it and without --model,
    /// the catalog's default model.
    #[arg(value_name = "MODEL", env = "BAIMO_MODEL")]
    pub default_model: Option<String>,
    /// Another model to serve, as NAME=PATH (PATH may be a catalog name); repeatable. The first model given
    /// (the positional one, else the first --model) answers requests that name no model.
    #[arg(
        long = "model",
        value_name = "NAME=PATH",
        env = "BAIMO_MODELS",
        value_delimiter = ','
    )]
    pub models: Vec<String>,
    #[arg(long, default_value = "127.0.0.1", env = "BAIMO_HOST")]
    pub host: String,
    #[arg(long, default_value_t = 8080, env = "BAIMO_PORT")]
    pub port: u16,
    /// A LoRA adapter (PEFT folder) served over the default model as NAME=PATH, or over another model as
    /// MODEL:NAME=PATH; requests reach it as `"model": "MODEL:NAME"`. Repeatable. More load and unload at
    /// runtime through /admin/adapters.
    #[arg(
        long = "adapter",
        value_name = "NAME=PATH",
        env = "BAIMO_ADAPTERS",
        value_delimiter = ','
    )]
    pub adapters: Vec<String>,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long, env = "BAIMO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Require `Authorization: Bearer KEY` on /admin/* (adapter loading); without it, the API key guards them.
    #[arg(long, env = "BAIMO_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Context window per sequence in tokens (default: the model's, capped at 4096).
    #[arg(long, short = 'c', env = "BAIMO_CTX")]
    pub ctx: Option<usize>,
    /// Memory budget of each model's paged KV cache, in MiB.
    #[arg(long, default_value_t = 512, env = "BAIMO_KV_CACHE_MB")]
    pub kv_cache_mb: usize,
    /// Most tokens in one batched forward pass (decodes + prefill chunks).
    #[arg(long, default_value_t = 512, env = "BAIMO_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: usize,
    /// Most sequences running at once per model.
    #[arg(long, default_value_t = 32, env = "BAIMO_MAX_RUNNING")]
    pub max_running: usize,
    /// Most requests waiting per model; beyond it requests get 429 with Retry-After.
    #[arg(long, default_value_t = 256, env = "BAIMO_MAX_QUEUE")]
    pub max_queue: usize,
    /// Do not reuse KV blocks of shared prompt prefixes.
    #[arg(long, env = "BAIMO_NO_PREFIX_CACHE")]
    pub no_prefix_cache: bool,
    /// Largest accepted request body in bytes (larger ones get 413).
    #[arg(long, default_value_t = 8 << 20, env = "BAIMO_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// On shutdown, how long to wait for requests in flight, in seconds.
    #[arg(long, default_value_t = 30, env = "BAIMO_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: u64,
    /// Worker threads for the model (default: all cores).
    #[arg(long, short = 't', env = "BAIMO_THREADS")]
    pub threads: Option<usize>,
    /// Tokenizer file for llama2.c checkpoints.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Keep quantized weights unpacked for the batched kernels after a layer's first batch (AVX-512 VNNI
    /// CPUs): concurrent streams decode faster (no repacking per step) at about 1.25–1.5 bytes per weight of
    /// extra memory (~630 MiB for a 0.5B model); same outputs either way. `auto` turns it on when three times
    /// the GGUF files' size is under a quarter of the memory available.
    #[arg(long, value_enum, default_value_t = PackWeights::Auto, env = "BAIMO_PACK_WEIGHTS")]
    pub pack_weights: PackWeights,
}

/// `--pack-weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PackWeights {
    Auto,
    On,
    Off,
}

/// Whether to keep packed weights for models whose files total `model_bytes`, and why.
fn pack_decision(mode: PackWeights, model_bytes: u64) -> (bool, String) {
    match mode {
        PackWeights::On => (true, "on".into()),
        PackWeights::Off => (false, "off".into()),
        PackWeights::Auto => {
            let need = 3 * model_bytes;
            match mem_available() {
                Some(avail) if need <= avail / 4 => (
                    true,
                    format!(
                        "on (auto: at most ~{} MiB with {} MiB available)",
                        need >> 20,
                        avail >> 20
                    ),
                ),
                Some(avail) => (
                    false,
                    format!(
                        "off (auto: ~{} MiB would exceed a quarter of the {} MiB available; --pack-weights on forces it)",
                        need >> 20,
                        avail >> 20
                    ),
                ),
                None => (false, "off (auto: available memory unknown)".into()),
            }
        }
    }
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux).
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// (name, spec) of every model to serve, default first.
fn model_specs(a: &ServeArgs) -> Result<Vec<(String, String)>> {
    let mut specs = Vec::new();
    if let Some(spec) = &a.default_model {
        specs.push((default_name(spec), spec.clone()));
    }
    for m in &a.models {
        let Some((name, spec)) = m.split_once('=') else {
            bail!("--model {m}: expected NAME=PATH");
        };
        if name.is_empty() || spec.is_empty() {
            bail!("--model {m}: expected NAME=PATH");
        }
        specs.push((name.to_string(), spec.to_string()));
    }
    if specs.is_empty() {
        let spec = baimo_store::DEFAULT_MODEL.to_string();
        specs.push((spec.clone(), spec));
    }
    for (i, (name, _)) in specs.iter().enumerate() {
        if specs[..i].iter().any(|(n, _)| n == name) {
            bail!("two models are named `{name}`");
        }
    }
    Ok(specs)
}

/// A catalog name serves under its own name; a path under its file name without the extension.
fn default_name(spec: &str) -> String {
    let p = std::path::Path::new(spec);
    if p.exists() {
        if let Some(stem) = p.file_stem() {
            return stem.to_string_lossy().into_owned();
        }
    }
    spec.to_string()
}

pub fn serve(store: &ModelStore, a: ServeArgs) -> Result<()> {
    if let Some(n) = a.threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let mut engines = Vec::new();
    let mut served = Vec::new();
    let mut models = Vec::new();
    for (name, spec) in model_specs(&a)? {
        models.push((name, resolve_model(store, Some(&spec))?));
    }
    // Only block-quantized (GGUF) weights are ever packed.
    let gguf_bytes = models
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok().filter(|m| m.is_file()))
        .map(|m| m.len())
        .sum();
    let (pack, why) = pack_decision(a.pack_weights, gguf_bytes);
    baimo_models::layers::set_pack_weights(pack);
    eprintln!("packed weights for batches: {why}");
    for (name, path) in models {
        let opts = LoadOptions {
            tokenizer: a.tokenizer.clone(),
        };
        let lm = baimo_engine::load(&path, &opts)
            .with_context(|| format!("loading {}", path.display()))?;
        let ctx = a
            .ctx
            .unwrap_or_else(|| lm.model.config().max_position_embeddings.clamp(16, 4096));
        let cfg = EngineConfig {
            ctx,
            kv_cache_mb: a.kv_cache_mb,
            max_batch_tokens: a.max_batch_tokens,
            max_running: a.max_running,
            max_queue: a.max_queue,
            prefix_cache: !a.no_prefix_cache,
            ..EngineConfig::default()
        };
        let lm = Arc::new(lm);
        let engine = ServingEngine::start(lm.clone(), cfg);
        eprintln!("model `{name}`: {} (ctx {ctx})", path.display());
        served.push(ServedModel::new(name, lm, engine.handle()));
        engines.push(engine);
    }
    for spec in &a.adapters {
        let Some((name, dir)) = spec
            .split_once('=')
            .filter(|(n, d)| !n.is_empty() && !d.is_empty())
        else {
            bail!("--adapter {spec}: expected NAME=PATH or MODEL:NAME=PATH");
        };
        let (model, name) =
            baimo_server::state::split_adapter_id(&served, name).unwrap_or((&served[0], name));
        let adapter = model
            .load_adapter(name, std::path::Path::new(dir))
            .with_context(|| format!("--adapter {spec}"))?;
        eprintln!(
            "adapter `{}:{}`: {}",
            model.id,
            adapter.name,
            adapter.path.display()
        );
    }
    let state = AppState::new(
        served,
        ServerConfig {
            api_key: a.api_key.clone().filter(|k| !k.is_empty()),
            admin_key: a.admin_key.clone().filter(|k| !k.is_empty()),
            max_body_bytes: a.max_body_bytes,
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let addr = format!("{}:{}", a.host, a.port);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr().context("reading the bound address")?;
        eprintln!("baimo serve: listening on http://{local} (OpenAI API at http://{local}/v1)");
        let shutdown = async {
            signal().await;
            eprintln!("baimo serve: shutting down (signal again to exit at once)");
            tokio::spawn(async {
                signal().await;
                eprintln!("baimo serve: second signal, exiting now");
                std::process::exit(130);
            });
        };
        baimo_server::serve(
            listener,
            state,
            shutdown,
            Duration::from_secs(a.shutdown_timeout),
        )
        .await
        .context("serving")
    })?;
    for e in engines {
        e.shutdown();
    }
    eprintln!("baimo serve: stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C (SIGINT).
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
