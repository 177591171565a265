//! `baimo`: argument parsing and wiring only. Everything else lives in the library crates.

mod bench;
mod chat;
mod commands;
mod finetune;
mod merge;
mod sampling;
mod serve;
mod threads;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baimo",
    version,
    about = "Baimo (百模): run, chat with and serve Llama- and Qwen-family models"
)]
struct Cli {
    /// Where pulled models live (default: the user's data dir, baimo/models).
    #[arg(long, global = true, env = "BAIMO_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture, parameter count, tensor types, context length, tokenizer and chat template of a model.
    Info(commands::InfoArgs),
    /// Generate an answer to one prompt, streamed (the chat template is applied unless --raw).
    Run(commands::RunArgs),
    /// Interactive multi-turn chat (/reset, /system TEXT, /exit).
    Chat(chat::ChatArgs),
    /// Perplexity over a text file, as llama.cpp's llama-perplexity reports it.
    Perplexity(commands::PerplexityArgs),
    /// LoRA fine-tuning on your own chat data (JSONL); writes a PEFT adapter.
    Finetune(Box<finetune::FinetuneArgs>),
    /// Fold a LoRA adapter into its base: a GGUF file (f16 or a chosen quantization) or a Hugging Face folder.
    Merge(merge::MergeArgs),
    /// Prompt-processing and generation speed, peak memory and load time, as llama-bench measures them.
    Bench(bench::BenchArgs),
    /// Download a model: a catalog name, or hf:REPO[/FILE].
    Pull(commands::PullArgs),
    /// List pulled models and the catalog.
    List,
    /// Remove a pulled model.
    Rm(commands::RmArgs),
    /// Serve models over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models).
    Serve(serve::ServeArgs),
}

/// glibc returns freed blocks above 128 KiB to the kernel (and trims the heap), so every forward pass's
/// activation buffers (megabytes at prefill) came back as fresh zero-filled pages: page faults were ~10% of
/// prefill time. Keep buffers up to glibc's 32 MiB ceiling on the heap and do not trim it; peak memory is
/// unchanged (it is the working set), it is just reused. One arena for all threads (see below).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // Forward passes run on whichever rayon worker takes them; with an arena per thread each one kept
        // its own copy of those buffers (shaped Q4_K_M pp512 at 2 threads: 608 MiB peak against 539).
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// candle's element-wise ops over 64Ki values or more (a batch's SwiGLU, residual adds) run on its own
/// barrier pool, whose workers spin 25,000 rounds after each op; beside our rayon workers on the same cores
/// that spinning took ~9% of a served batch's CPU time (perf, c=16). Park them after a short spin instead,
/// unless the user set it (c=16 aggregate 84.8 -> 91.2 tok/s, prefill within noise).
fn tune_candle_pool() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Called at the start of `main`, before any other thread exists.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
}

/// The value of `GLIBC_TUNABLES` that puts the heap on transparent huge pages, when this process should be
/// started again with it: training on Linux/glibc where the kernel gives huge pages only to memory that asks
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, the usual default) and the user has not set
/// the tunable either way.
///
/// A training step streams every frozen weight twice (hundreds of MB for a small model) and allocates its
/// activations and gradients afresh; on 4 KiB pages the weights' strided reads missed the TLB on nearly every
/// row. With `glibc.malloc.hugetlb=1` glibc advises huge pages (`MADV_HUGEPAGE`) for the memory it takes from
/// the kernel: SmolLM2-135M's step took 0.90–0.98 s against 1.15–1.42 s in five alternating pairs (same
/// losses), for ~19% more peak memory and ~1.5 s more loading (the kernel zeroes and compacts 2 MiB pages).
/// The tunable is read only when a process starts, so `main` execs itself once with it.
fn huge_page_tunables(cli: &Cli) -> Option<String> {
    if !matches!(cli.command, Command::Finetune(_))
        || !cfg!(all(target_os = "linux", target_env = "gnu"))
    {
        return None;
    }
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.contains("glibc.malloc.hugetlb") {
        return None;
    }
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    if !mode.contains("[madvise]") {
        return None;
    }
    Some(if tunables.is_empty() {
        "glibc.malloc.hugetlb=1".into()
    } else {
        format!("{tunables}:glibc.malloc.hugetlb=1")
    })
}

/// Replaces this process with itself, same arguments, `GLIBC_TUNABLES` set to `tunables`; returns only if
/// that fails (the run then goes on as it is).
#[cfg(unix)]
fn exec_with_tunables(tunables: &str) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec()
}

#[cfg(not(unix))]
fn exec_with_tunables(_: &str) -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::Unsupported)
}

fn main() {
    let cli = Cli::parse();
    if let Some(tunables) = huge_page_tunables(&cli) {
        // Before any thread exists or any weight is loaded.
        eprintln!(
            "note: restarting on transparent huge pages (GLIBC_TUNABLES={tunables}; \
             glibc.malloc.hugetlb=0 keeps 4 KiB pages)"
        );
        let err = exec_with_tunables(&tunables);
        eprintln!(
            "note: could not restart with transparent huge pages ({err}); training on 4 KiB pages"
        );
    }
    tune_allocator();
    tune_candle_pool();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BAIMO_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    tracing::debug!(
        glibc_tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
        "started"
    );
    let store = commands::store(cli.models_dir.clone());
    let result = match cli.command {
        Command::Info(a) => commands::info(&store, a),
        Command::Run(a) => commands::run(&store, a),
        Command::Chat(a) => chat::chat(&store, a),
        Command::Perplexity(a) => commands::perplexity(&store, a),
        Command::Finetune(a) => finetune::finetune(&store, *a),
        Command::Bench(a) => bench::bench(&store, a),
        Command::Merge(a) => merge::merge(&store, a),
        Command::Pull(a) => commands::pull(&store, a),
        Command::List => commands::list(&store),
        Command::Rm(a) => commands::rm(&store, a),
        Command::Serve(a) => serve::serve(&store, a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
