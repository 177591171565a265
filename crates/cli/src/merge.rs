//! `baimo merge BASE ADAPTER -o OUT`: fold a LoRA adapter into its base model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baimo_formats::gguf::GgufFile;
use baimo_models::merge::{merge_gguf, merge_hf_dir, OutType};
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
    /// Output: a .gguf file for a GGUF base, a folder for a Hugging Face base.
    #[arg(short, long)]
    pub out: PathBuf,
    /// GGUF only: the type of every matrix in the output (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1,
    /// q2_k..q6_k), or `keep` for the base's own types. Rows that are not whole blocks of a K-quant fall
    /// back to q8_0 (and are listed).
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
    let started = std::time::Instant::now();
    let report = if base.is_dir() {
        if a.outtype != "f16" && a.outtype != "keep" {
            bail!("--outtype applies to GGUF output; a Hugging Face base keeps its dtypes");
        }
        merge_hf_dir(&base, &adapter, &a.out)
            .with_context(|| format!("merging into {}", base.display()))?
    } else {
        if a.out.extension().and_then(|e| e.to_str()) != Some("gguf") {
            bail!("a GGUF base is merged into a GGUF file: give -o NAME.gguf");
        }
        let outtype: OutType = a.outtype.parse().map_err(anyhow::Error::msg)?;
        let g = GgufFile::open(&base).with_context(|| format!("opening {}", base.display()))?;
        let tmp = partial_path(&a.out);
        let r = merge_gguf(&g, &adapter, outtype, &tmp);
        match r {
            Ok(r) => {
                std::fs::rename(&tmp, &a.out).with_context(|| {
                    format!("renaming {} to {}", tmp.display(), a.out.display())
                })?;
                r
            }
            Err(e) => {
                std::fs::remove_file(&tmp).ok();
                return Err(e).with_context(|| format!("merging into {}", base.display()));
            }
        }
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

/// `OUT.partial` beside OUT: written first, renamed when complete, so a failed merge leaves no half file.
fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}
