//! One function per subcommand (except chat).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use baimo_engine::{LoadOptions, LoadedModel, Session};
use baimo_store::{ModelStore, PullOptions};
use baimo_tokenize::Message;
use clap::Args;

use crate::sampling::GenFlags;

pub fn store(dir: Option<PathBuf>) -> ModelStore {
    ModelStore::new(dir.unwrap_or_else(ModelStore::default_dir))
}

/// A path, a pulled model or a catalog name (pulled on first use).
pub fn resolve_model(store: &ModelStore, spec: Option<&str>) -> Result<PathBuf> {
    let spec = spec
        .map(str::to_string)
        .unwrap_or_else(|| baimo_store::DEFAULT_MODEL.to_string());
    if let Some(p) = store.resolve(&spec) {
        return Ok(p);
    }
    let looks_like_path = !spec.starts_with("hf:")
        && (spec.contains('/')
            || spec.contains('\\')
            || [".gguf", ".bin", ".safetensors"]
                .iter()
                .any(|e| spec.ends_with(e)));
    if looks_like_path {
        anyhow::bail!("{spec}: no such file or directory");
    }
    eprintln!(
        "model `{spec}` is not here yet; pulling it into {}",
        store.dir().display()
    );
    let pulled = store
        .pull(&spec, &PullOptions::default())
        .with_context(|| format!("pulling `{spec}`"))?;
    Ok(pulled.path)
}

pub fn load_model(store: &ModelStore, spec: Option<&str>, flags: &GenFlags) -> Result<LoadedModel> {
    flags.init_threads()?;
    let path = resolve_model(store, spec)?;
    let opts = LoadOptions {
        tokenizer: flags.tokenizer.clone(),
    };
    let mut m =
        baimo_engine::load(&path, &opts).with_context(|| format!("loading {}", path.display()))?;
    if let Some(dir) = &flags.adapter {
        let adapter = baimo_models::LoraAdapter::load(dir)
            .with_context(|| format!("loading the adapter {}", dir.display()))?;
        m.model
            .set_adapter(Some(&adapter))
            .with_context(|| format!("applying the adapter {}", dir.display()))?;
    }
    Ok(m)
}

#[derive(Args)]
pub struct InfoArgs {
    /// Model path or name.
    pub model: String,
    /// List every tensor.
    #[arg(long)]
    pub tensors: bool,
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

pub fn info(store: &ModelStore, a: InfoArgs) -> Result<()> {
    let path = resolve_model(store, Some(&a.model))?;
    let m = baimo_engine::load(
        &path,
        &LoadOptions {
            tokenizer: a.tokenizer.clone(),
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    let c = m.model.config();
    println!("path:            {}", m.info.path.display());
    if let Some(n) = &m.info.name {
        println!("name:            {n}");
    }
    println!("format:          {:?}", m.info.format);
    println!("architecture:    {}", c.arch.name());
    println!(
        "parameters:      {} ({:.1} M)",
        c.parameter_count(),
        c.parameter_count() as f64 / 1e6
    );
    println!("layers:          {}", c.num_hidden_layers);
    println!(
        "hidden size:     {}  (intermediate {})",
        c.hidden_size, c.intermediate_size
    );
    println!(
        "attention:       {} heads, {} kv heads, head dim {}{}{}",
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        if c.attention_bias { ", qkv bias" } else { "" },
        if c.qk_norm { ", q/k norm" } else { "" }
    );
    println!("context length:  {}", c.max_position_embeddings);
    println!(
        "rope:            theta {}, {:?} pairs{}",
        c.rope_theta,
        c.rope_style,
        match &c.rope_scaling {
            None => String::new(),
            Some(s) => format!(", scaling {}", scaling_name(s)),
        }
    );
    println!(
        "embeddings:      {}",
        if c.tie_word_embeddings {
            "tied"
        } else {
            "untied"
        }
    );
    println!(
        "vocab:           {} ({})",
        m.tokenizer.vocab_size(),
        m.tokenizer.kind()
    );
    if let Some(ft) = &m.info.file_type {
        println!("file type:       {ft}");
    }
    if !m.info.tensors.is_empty() {
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for t in &m.info.tensors {
            *counts.entry(t.dtype.as_str()).or_default() += 1;
        }
        let s: Vec<String> = counts.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        println!("tensor types:    {}", s.join(", "));
    }
    println!(
        "chat template:   {}",
        if m.template.is_fallback() {
            "none in the model (ChatML fallback)"
        } else {
            "present"
        }
    );
    if a.tensors {
        for t in &m.info.tensors {
            println!("  {:<40} {:<6} {:?}", t.name, t.dtype, t.shape);
        }
    }
    Ok(())
}

fn scaling_name(s: &baimo_models::RopeScaling) -> String {
    match s {
        baimo_models::RopeScaling::Linear { factor } => format!("linear ×{factor}"),
        baimo_models::RopeScaling::Llama3 { factor, .. } => format!("llama3 ×{factor}"),
        baimo_models::RopeScaling::FreqFactors(_) => "per-frequency factors (rope_freqs)".into(),
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Model path or name (default model when omitted).
    pub model: Option<String>,
    /// The prompt.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// System message (chat mode).
    #[arg(long)]
    pub system: Option<String>,
    /// Feed the prompt as plain text, without the chat template (BOS only when the tokenizer adds one).
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object with text, tokens and usage instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// With --json: top-K log-probabilities at each generated position.
    #[arg(long)]
    pub logprobs: Option<usize>,
    #[command(flatten)]
    pub gen: GenFlags,
}

pub fn prompt_tokens(
    m: &LoadedModel,
    system: Option<&str>,
    prompt: &str,
    raw: bool,
) -> Result<Vec<u32>> {
    if raw {
        return Ok(m.tokenizer.encode(prompt, true, false)?);
    }
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(Message {
            role: "system".into(),
            content: s.into(),
        });
    }
    msgs.push(Message {
        role: "user".into(),
        content: prompt.into(),
    });
    let text = m.template.render(&msgs, true)?;
    Ok(m.tokenizer
        .encode(&text, template_wants_bos(m, &text), true)?)
}

/// A rendered template that already starts with the BOS text must not get a second BOS (llama.cpp checks
/// the same in `common_chat_templates_apply` / tokenization of chat prompts).
pub fn template_wants_bos(m: &LoadedModel, text: &str) -> bool {
    let bos = m.tokenizer.bos_token_str();
    !(m.tokenizer.adds_bos() && !bos.is_empty() && text.starts_with(bos))
}

pub fn run(store: &ModelStore, a: RunArgs) -> Result<()> {
    let m = load_model(store, a.model.as_deref(), &a.gen)?;
    if m.template.is_fallback() && !a.raw {
        eprintln!("note: the model has no chat template; using the built-in ChatML template");
    }
    let tokens = prompt_tokens(&m, a.system.as_deref(), &a.prompt, a.raw)?;
    let ctx = a.gen.ctx_for(m.model.config().max_position_embeddings);
    let mut opts = a.gen.options(m.defaults.as_ref());
    opts.logprobs = a.logprobs;
    let mut session = Session::new(&m.model, ctx);
    if a.json {
        let g = session.generate(&m.model, &m.tokenizer, &tokens, &opts, |_| true)?;
        let out = serde_json::json!({
            "text": g.text,
            "tokens": g.tokens.iter().map(|t| serde_json::json!({
                "id": t.id, "text": t.text,
                "logprob": if t.logprob.is_nan() { serde_json::Value::Null } else { serde_json::json!(t.logprob) },
                "top_logprobs": t.top_logprobs,
            })).collect::<Vec<_>>(),
            "finish_reason": g.finish_reason,
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens()},
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let mut stdout = std::io::stdout();
    let g = session.generate(&m.model, &m.tokenizer, &tokens, &opts, |t| {
        let _ = stdout.write_all(t.as_bytes());
        let _ = stdout.flush();
        true
    })?;
    println!();
    let secs = g.decode_time.as_secs_f64();
    eprintln!(
        "[prompt {} tokens in {:.2}s, {} tokens generated at {:.1} tok/s]",
        g.prompt_tokens,
        g.prefill_time.as_secs_f64(),
        g.completion_tokens(),
        if secs > 0.0 {
            g.completion_tokens() as f64 / secs
        } else {
            0.0
        }
    );
    Ok(())
}

#[derive(Args)]
pub struct PerplexityArgs {
    pub model: String,
    /// Text file to score.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    #[arg(long, short = 'c', default_value_t = 512)]
    pub ctx: usize,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't', env = "BAIMO_THREADS")]
    pub threads: Option<usize>,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

pub fn perplexity(store: &ModelStore, a: PerplexityArgs) -> Result<()> {
    crate::threads::init(a.threads)?;
    let path = resolve_model(store, Some(&a.model))?;
    let m = baimo_engine::load(&path, &LoadOptions::default())?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let r = baimo_engine::perplexity(&m.model, &m.tokenizer, &text, a.ctx, |done, total| {
        if !a.json {
            eprint!("\r[{done}/{total}]");
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        eprintln!();
        let chunks: Vec<String> = r
            .per_chunk
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[{}]{:.4}", i + 1, p))
            .collect();
        println!("{}", chunks.join(","));
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5}  ({} chunks of {} tokens, {} tokens)",
            r.ppl, r.ppl_err, r.chunks, r.ctx, r.tokens
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct PullArgs {
    /// Catalog name (see `baimo list`) or hf:REPO[/FILE].
    pub spec: String,
}

pub fn pull(store: &ModelStore, a: PullArgs) -> Result<()> {
    let p = store.pull(&a.spec, &PullOptions::default())?;
    println!("{} -> {}", p.name, p.path.display());
    Ok(())
}

pub fn list(store: &ModelStore) -> Result<()> {
    let models = store.list();
    println!("pulled models in {}:", store.dir().display());
    if models.is_empty() {
        println!("  (none)");
    }
    for m in &models {
        println!(
            "  {:<36} {:>8.1} MB  {}",
            m.name,
            m.size as f64 / 1e6,
            m.path.display()
        );
    }
    println!("catalog:");
    for e in baimo_store::catalog() {
        let star = if e.name == baimo_store::DEFAULT_MODEL {
            " (default)"
        } else {
            ""
        };
        println!("  {:<36} {}{}", e.name, e.description, star);
    }
    Ok(())
}

#[derive(Args)]
pub struct RmArgs {
    pub name: String,
}

pub fn rm(store: &ModelStore, a: RmArgs) -> Result<()> {
    let m = store.rm(&a.name)?;
    println!("removed {} ({})", m.name, m.path.display());
    Ok(())
}
