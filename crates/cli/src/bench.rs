//! `baimo bench`: prompt-processing and generation speed in the spirit of llama.cpp's `llama-bench`
//! (same test names and definitions, see `baimo_engine::bench`), plus peak RSS, load time and the decode
//! step's distance from the memory-bandwidth and arithmetic limits.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use baimo_engine::bench::{
    kv_bytes_per_position, rss_mib, tokens_per_s, Bencher, DecodeCost, Spread, TestKind, TestSpec,
};
use baimo_engine::LoadOptions;
use baimo_store::ModelStore;
use clap::Args;
use serde_json::{json, Value};

use crate::commands::resolve_model;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model path or name.
    pub model: String,
    /// Prompt lengths to time (ppN), comma-separated; 0 skips prompt processing.
    #[arg(
        long = "n-prompt",
        short = 'p',
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to time (tgN), comma-separated; 0 skips generation.
    #[arg(
        long = "n-gen",
        short = 'n',
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Tokens already in context before each test, comma-separated.
    #[arg(
        long = "depth",
        short = 'd',
        value_delimiter = ',',
        default_value = "0"
    )]
    pub depth: Vec<usize>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't', env = "BAIMO_THREADS")]
    pub threads: Option<usize>,
    /// Timed repetitions of each test (after one warm-up).
    #[arg(long = "repetitions", short = 'r', default_value_t = 5)]
    pub reps: usize,
    /// Skip the untimed warm-up run of each test (llama-bench `--no-warmup`).
    #[arg(long)]
    pub no_warmup: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Memory read bandwidth in GB/s (e.g. from ../shared/bench/membw.py) for the decode bandwidth limit.
    #[arg(long = "mem-bw", value_name = "GBs")]
    pub mem_bw: Option<f64>,
    /// Core clock in GHz for the arithmetic limit (default: /proc/cpuinfo `cpu MHz`).
    #[arg(long = "cpu-ghz")]
    pub cpu_ghz: Option<f64>,
    /// Seed of the random tokens.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Tokenizer file for llama2.c checkpoints.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl BenchArgs {
    /// The tests in llama-bench's order: for each depth, every ppN, then every tgN.
    pub fn tests(&self) -> Vec<TestSpec> {
        let mut out = Vec::new();
        for &depth in &self.depth {
            for &n in self.n_prompt.iter().filter(|&&n| n > 0) {
                out.push(TestSpec {
                    kind: TestKind::Prompt,
                    n,
                    depth,
                });
            }
            for &n in self.n_gen.iter().filter(|&&n| n > 0) {
                out.push(TestSpec {
                    kind: TestKind::Gen,
                    n,
                    depth,
                });
            }
        }
        out
    }
}

/// Arithmetic peak assumed for the limit: per core 2 FMA units × the f32 lanes of the widest vectors the
/// kernels use here (16 with AVX-512, else 8) × 2 flops per FMA per cycle. Int8 dot products (VNNI) run at
/// a different rate and the clock under load differs from /proc/cpuinfo's, so this is a round yardstick,
/// not a promise.
pub fn flops_per_cycle_per_core() -> f64 {
    let lanes = if baimo_kernels::float_kernels_fast() {
        16.0
    } else {
        8.0
    };
    2.0 * lanes * 2.0
}

fn cpu_ghz() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some(mhz / 1000.0)
}

fn file_bytes(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

fn spread_json(s: Option<Spread>) -> Value {
    s.map_or(Value::Null, |s| json!(s))
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

struct TestResult {
    spec: TestSpec,
    tps: Vec<f64>,
    limits: Value,
}

/// The two decode limits of a tgN test at its mean context `depth + n/2`.
fn decode_limits(
    cost: Option<&DecodeCost>,
    spec: TestSpec,
    median_tps: f64,
    mem_bw_gbs: Option<f64>,
    peak_gflops: Option<f64>,
) -> Value {
    let Some(c) = cost else {
        return Value::Null;
    };
    let ctx = spec.depth as f64 + spec.n as f64 / 2.0;
    let (bytes, flops) = (c.bytes_at(ctx), c.flops_at(ctx));
    let bw_limit = mem_bw_gbs.map(|bw| bw * 1e9 / bytes);
    let fl_limit = peak_gflops.map(|p| p * 1e9 / flops);
    json!({
        "mean_context": ctx,
        "bytes_per_token": bytes.round(),
        "weight_bytes_per_token": c.weight_bytes,
        "flops_per_token": flops.round(),
        "mem_bw_gbs": mem_bw_gbs,
        "bandwidth_limit_tokens_per_s": bw_limit.map(|x| round(x, 2)),
        "bandwidth_fraction": bw_limit.map(|l| round(median_tps / l, 4)),
        "peak_gflops": peak_gflops.map(|x| round(x, 1)),
        "compute_limit_tokens_per_s": fl_limit.map(|x| round(x, 2)),
        "compute_fraction": fl_limit.map(|l| round(median_tps / l, 4)),
    })
}

pub fn bench(store: &ModelStore, a: BenchArgs) -> Result<()> {
    let threads = crate::threads::init(a.threads)?;
    let tests = a.tests();
    let path = resolve_model(store, Some(&a.model))?;

    let t0 = Instant::now();
    let m = baimo_engine::load(
        &path,
        &LoadOptions {
            tokenizer: a.tokenizer.clone(),
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    let cfg = m.model.config().clone();
    let ctx = tests.iter().map(|t| t.depth + t.n).max().unwrap_or(1);
    let mut b = Bencher::new(&m.model, ctx, m.tokenizer.vocab_size(), a.seed);
    b.first_token()?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = rss_mib().map(|r| r.1);

    let cost = DecodeCost::from_gguf(&path, &cfg);
    let ghz = a.cpu_ghz.or_else(cpu_ghz);
    let peak_gflops = ghz.map(|g| g * flops_per_cycle_per_core() * threads as f64);
    let mut results = Vec::new();
    for spec in tests {
        if !a.json {
            eprint!("\r{:<20}", spec.name());
        }
        let times = b.run(spec, a.reps, !a.no_warmup)?;
        let tps = tokens_per_s(spec.n, &times);
        let limits = match (spec.kind, Spread::of(&tps)) {
            (TestKind::Gen, Some(s)) => {
                decode_limits(cost.as_ref(), spec, s.median, a.mem_bw, peak_gflops)
            }
            _ => Value::Null,
        };
        results.push(TestResult { spec, tps, limits });
    }
    if !a.json {
        eprint!("\r{:<20}\r", "");
    }
    let peak_rss = rss_mib().map(|r| r.0);

    let first = |k: TestKind| results.iter().find(|r| r.spec.kind == k);
    let pp = first(TestKind::Prompt);
    let tg = first(TestKind::Gen);
    let out = json!({
        "model": path.display().to_string(),
        "model_name": m.info.name,
        "file_type": m.info.file_type,
        "file_bytes": file_bytes(&path),
        "params": cfg.parameter_count(),
        "threads": threads,
        "n_prompt": pp.map_or(0, |r| r.spec.n),
        "n_gen": tg.map_or(0, |r| r.spec.n),
        "depth": a.depth.first().copied().unwrap_or(0),
        "reps": a.reps,
        "warmup": !a.no_warmup,
        "prompt_tokens_per_s": spread_json(pp.and_then(|r| Spread::of(&r.tps))),
        "gen_tokens_per_s": spread_json(tg.and_then(|r| Spread::of(&r.tps))),
        "peak_rss_mb": peak_rss.map(|x| round(x, 1)),
        "rss_after_load_mb": rss_after_load.map(|x| round(x, 1)),
        "load_s": round(load_s, 4),
        "load_model_s": round(m.load_time.as_secs_f64(), 4),
        "ctx": ctx,
        "kv_bytes": kv_bytes_per_position(&cfg) * ctx as u64,
        "kv_dtype": "f32",
        "decode_limits": tg.map_or(Value::Null, |r| r.limits.clone()),
        "tests": results.iter().map(|r| json!({
            "name": r.spec.name(),
            "kind": match r.spec.kind { TestKind::Prompt => "prompt", TestKind::Gen => "gen" },
            "n": r.spec.n,
            "depth": r.spec.depth,
            "tokens_per_s": spread_json(Spread::of(&r.tps)),
            "samples_tokens_per_s": r.tps.iter().map(|x| round(*x, 3)).collect::<Vec<_>>(),
            "decode_limits": r.limits,
        })).collect::<Vec<_>>(),
    });
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print_table(&out, &results);
    }
    Ok(())
}

fn print_table(out: &Value, results: &[TestResult]) {
    let name = out["model_name"]
        .as_str()
        .or_else(|| out["model"].as_str())
        .unwrap_or("?");
    let ft = out["file_type"].as_str().unwrap_or("");
    let size = out["file_bytes"]
        .as_f64()
        .map_or("?".to_string(), |b| format!("{:.1} MiB", b / 1048576.0));
    let params = out["params"].as_f64().unwrap_or(0.0) / 1e6;
    let threads = &out["threads"];
    println!("| model | size | params | threads | test | t/s (median) | min | max |");
    println!("|---|--:|--:|--:|---|--:|--:|--:|");
    for r in results {
        let Some(s) = Spread::of(&r.tps) else {
            continue;
        };
        println!(
            "| {name} {ft} | {size} | {params:.1} M | {threads} | {} | {:.2} | {:.2} | {:.2} |",
            r.spec.name(),
            s.median,
            s.min,
            s.max
        );
    }
    println!();
    println!(
        "load to first token {:.3} s (model load {:.3} s); peak RSS {} MiB (after load {} MiB); KV cache {:.1} MiB (f32, {} positions)",
        out["load_s"].as_f64().unwrap_or(f64::NAN),
        out["load_model_s"].as_f64().unwrap_or(f64::NAN),
        out["peak_rss_mb"],
        out["rss_after_load_mb"],
        out["kv_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        out["ctx"]
    );
    for r in results.iter().filter(|r| !r.limits.is_null()) {
        let l = &r.limits;
        let pct = |k: &str| {
            l[k].as_f64()
                .map_or("n/a".to_string(), |f| format!("{:.0}%", 100.0 * f))
        };
        println!(
            "{}: {:.1} MiB and {:.2} GFLOP per token; bandwidth limit {} tok/s ({} of it); arithmetic limit {} tok/s ({} of it)",
            r.spec.name(),
            l["bytes_per_token"].as_f64().unwrap_or(0.0) / 1048576.0,
            l["flops_per_token"].as_f64().unwrap_or(0.0) / 1e9,
            l["bandwidth_limit_tokens_per_s"],
            pct("bandwidth_fraction"),
            l["compute_limit_tokens_per_s"],
            pct("compute_fraction"),
        );
    }
    if results.iter().any(|r| !r.limits.is_null()) && out["decode_limits"]["mem_bw_gbs"].is_null() {
        println!("(pass --mem-bw GBs for the bandwidth limit)");
    }
}
