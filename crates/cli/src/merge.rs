//! `baimo merge BASE ADAPTER -o OUT`: fold a LoRA adapter into its base model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baimo_formats::gguf::GgufFile;
use baimo_models::merge::{
    merge_gguf, merge_gguf_to_hf, merge_hf_dir, merge_hf_to_gguf, parse_hf_dtype, OutType,
};
use baimo_models::LoraAdapter;
use baimo_store::ModelStore;
use clap::Args;

use crate::commands::resolve_model;

#[derive(Args)]
pub struct MergeArgs {
    /// Base model: a GGUF file (or pulled model name) or a Hugging Face folder.
    pub base: String,
    /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors), e.g. from `baimo finetune`.
    pub adapter: PathBuf,
    /// Output: a .gguf file (from a GGUF base, or from a Hugging Face base converted as llama.cpp's
    /// convert_hf_to_gguf.py does: llama, qwen2, qwen3), or else a Hugging Face folder: from a Hugging Face
    /// base, model.safetensors in the base's dtypes with its config and tokenizer files copied; from a GGUF
    /// base, model.safetensors dequantized to --outtype with config, generation config and tokenizer files
    /// written from the GGUF metadata (what transformers' from_pretrained loads).
    #[arg(short, long)]
    pub out: PathBuf,
    /// GGUF output: the type of every matrix (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k), or
    /// `keep` for the base's own types; norms and biases stay f32. Rows that are not whole blocks of the type
    /// fall back to q8_0 (else f16) and are listed. Folder from a GGUF base: f32, f16 or bf16 for every tensor.
    #[arg(long, default_value = "f16")]
    pub outtype: String,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    #[arg(long, short = 't', env = "BAIMO_THREADS")]
    pub threads: Option<usize>,
}

pub fn merge(store: &ModelStore, a: MergeArgs) -> Result<()> {
    crate::threads::init(a.threads)?;
    let base = resolve_model(store, Some(&a.base))?;
    let adapter = LoraAdapter::load(&a.adapter)
        .with_context(|| format!("loading the adapter {}", a.adapter.display()))?;
    if a.out.exists() && !a.force {
        bail!("{} exists (pass --force to replace it)", a.out.display());
    }
    let to_gguf = a.out.extension().and_then(|e| e.to_str()) == Some("gguf");
    let started = std::time::Instant::now();
    let context = || format!("merging into {}", base.display());
    let report = if base.is_dir() && !to_gguf {
        if a.outtype != "f16" && a.outtype != "keep" {
            bail!("--outtype applies to GGUF output; a Hugging Face folder output keeps the base's dtypes");
        }
        via_partial(&a.out, |tmp| merge_hf_dir(&base, &adapter, tmp)).with_context(context)?
    } else if !to_gguf {
        let dtype = parse_hf_dtype(&a.outtype).map_err(anyhow::Error::msg)?;
        via_partial(&a.out, |tmp| {
            merge_gguf_to_hf(&GgufFile::open(&base)?, Some(&adapter), dtype, tmp)
        })
        .with_context(context)?
    } else {
        let outtype: OutType = a.outtype.parse().map_err(anyhow::Error::msg)?;
        via_partial(&a.out, |tmp| {
            if base.is_dir() {
                merge_hf_to_gguf(&base, Some(&adapter), outtype, None, tmp)
            } else {
                let g = GgufFile::open(&base)?;
                merge_gguf(&g, &adapter, outtype, tmp)
            }
        })
        .with_context(context)?
    };
    for (name, asked, got) in &report.fallbacks {
        eprintln!("note: {name}: rows are not whole {asked} blocks, written as {got}");
    }
    eprintln!(
        "merged {} modules of {} into {} ({} tensors) in {:.1} s",
        report.merged,
        a.adapter.display(),
        a.out.display(),
        report.tensors,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `write` on `OUT.partial` beside OUT (a file or a folder) and renames it to OUT when it succeeds, so a
/// failed merge leaves nothing behind. An existing OUT (allowed by --force) is replaced only then.
fn via_partial<T>(out: &Path, write: impl FnOnce(&Path) -> baimo_models::Result<T>) -> Result<T> {
    let tmp = partial_path(out);
    remove(&tmp);
    match write(&tmp) {
        Ok(r) => {
            if out.is_dir() {
                std::fs::remove_dir_all(out)
                    .with_context(|| format!("replacing {}", out.display()))?;
            }
            std::fs::rename(&tmp, out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
            Ok(r)
        }
        Err(e) => {
            remove(&tmp);
            Err(e.into())
        }
    }
}

/// Removes a file or a folder, if there is one.
fn remove(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).ok();
    } else {
        std::fs::remove_file(path).ok();
    }
}

/// `OUT.partial` beside OUT: written first, renamed when complete, so a failed merge leaves no half file.
fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}
