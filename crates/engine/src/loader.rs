//! Opening a model path: GGUF file, Hugging Face folder or llama2.c checkpoint, with its tokenizer,
//! chat template and default sampling settings.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use baimo_formats::gguf::GgufFile;
use baimo_formats::llama2c::Llama2cCheckpoint;
use baimo_models::weights::{gguf_weight_infos, ModelFormat, WeightInfo};
use baimo_models::Transformer;
use baimo_tokenize::{ChatTemplate, Tokenizer};
use serde_json::Value as Json;

use crate::{EngineError, Result, SamplingParams};

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Tokenizer file for llama2.c checkpoints (default: `tokenizer.bin` or `tok<VOCAB>.bin` beside it).
    pub tokenizer: Option<PathBuf>,
}

/// What `baimo info` prints.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub name: Option<String>,
    pub tensors: Vec<WeightInfo>,
    pub file_type: Option<String>,
}

pub struct LoadedModel {
    pub model: Transformer,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Sampling defaults the model ships (HF `generation_config.json`, GGUF `general.sampling.*`).
    pub defaults: Option<SamplingParams>,
    pub info: ModelInfo,
    pub load_time: std::time::Duration,
}

fn detect(path: &Path) -> Result<ModelFormat> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelFormat::Safetensors);
        }
        return Err(EngineError::UnknownModelFormat {
            path: path.display().to_string(),
        });
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let n = f.read(&mut magic).map_err(|e| EngineError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if n == 4 && &magic == b"GGUF" {
        return Ok(ModelFormat::Gguf);
    }
    if path.extension().and_then(|e| e.to_str()) == Some("bin") {
        return Ok(ModelFormat::Llama2c);
    }
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        // Let the GGUF reader name the problem (bad magic, truncation).
        return Ok(ModelFormat::Gguf);
    }
    Err(EngineError::UnknownModelFormat {
        path: path.display().to_string(),
    })
}

fn template_for(tokenizer: &Tokenizer) -> Result<ChatTemplate> {
    Ok(match tokenizer.chat_template() {
        Some(src) => ChatTemplate::new(src, tokenizer.bos_token_str(), tokenizer.eos_token_str())?,
        None => ChatTemplate::chatml(),
    })
}

/// Loads model, tokenizer and template from `path`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let t0 = Instant::now();
    let format = detect(path)?;
    let (model, tokenizer, defaults, info) = match format {
        ModelFormat::Gguf => {
            let g = GgufFile::open(path)?;
            // Building the tokenizer (vocabulary and merges from the metadata) takes about as long as
            // mapping the weights: do both at once.
            let (model, tokenizer) = std::thread::scope(|s| {
                let tok = s.spawn(|| Tokenizer::from_gguf(&g));
                let model = Transformer::from_gguf(&g);
                let tokenizer = tok.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                (model, tokenizer)
            });
            let (model, tokenizer) = (model?, tokenizer?);
            let info = ModelInfo {
                path: path.to_path_buf(),
                format,
                name: g.get_str("general.name").map(str::to_string),
                tensors: gguf_weight_infos(&g),
                file_type: g.get_u64("general.file_type").map(file_type_name),
            };
            (model, tokenizer, gguf_sampling(&g), info)
        }
        ModelFormat::Safetensors => {
            let (model, tokenizer) = std::thread::scope(|s| {
                let tok = s.spawn(|| Tokenizer::from_hf_dir(path));
                let model = Transformer::from_hf_dir(path);
                let tokenizer = tok.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                (model, tokenizer)
            });
            let (model, tokenizer) = (model?, tokenizer?);
            let info = ModelInfo {
                path: path.to_path_buf(),
                format,
                name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                tensors: Vec::new(),
                file_type: None,
            };
            (
                model,
                tokenizer,
                hf_sampling(&path.join("generation_config.json")),
                info,
            )
        }
        ModelFormat::Llama2c => {
            let ckpt = Llama2cCheckpoint::open(path)?;
            let vocab = ckpt.config.vocab_size;
            let tok_path = match &opts.tokenizer {
                Some(p) => p.clone(),
                None => find_llama2c_tokenizer(path, vocab).ok_or_else(|| {
                    EngineError::MissingTokenizer {
                        path: path.display().to_string(),
                    }
                })?,
            };
            let tokenizer = Tokenizer::from_llama2c(&tok_path, vocab)?;
            let model = Transformer::from_llama2c(&ckpt)?;
            let info = ModelInfo {
                path: path.to_path_buf(),
                format,
                name: path.file_stem().map(|n| n.to_string_lossy().into_owned()),
                tensors: Vec::new(),
                file_type: Some("F32".into()),
            };
            (model, tokenizer, None, info)
        }
    };
    let template = template_for(&tokenizer)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
        defaults,
        info,
        load_time: t0.elapsed(),
    })
}

fn find_llama2c_tokenizer(path: &Path, vocab: usize) -> Option<PathBuf> {
    let dir = path.parent()?;
    [format!("tok{vocab}.bin"), "tokenizer.bin".to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn hf_sampling(path: &Path) -> Option<SamplingParams> {
    let j: Json = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let mut p = SamplingParams::default();
    let f = |k: &str| j.get(k).and_then(Json::as_f64).map(|v| v as f32);
    if j.get("do_sample").and_then(Json::as_bool) == Some(false) {
        p.temperature = 0.0;
    } else if let Some(t) = f("temperature") {
        p.temperature = t;
    }
    if let Some(v) = f("top_p") {
        p.top_p = v;
    }
    if let Some(v) = j.get("top_k").and_then(Json::as_u64) {
        p.top_k = v as usize;
    }
    if let Some(v) = f("min_p") {
        p.min_p = v;
    }
    if let Some(v) = f("repetition_penalty") {
        p.repeat_penalty = v;
    }
    Some(p)
}

fn gguf_sampling(g: &GgufFile) -> Option<SamplingParams> {
    let mut p = SamplingParams::default();
    let mut any = false;
    if let Some(v) = g.get_f32("general.sampling.temp") {
        p.temperature = v;
        any = true;
    }
    if let Some(v) = g.get_f32("general.sampling.top_p") {
        p.top_p = v;
        any = true;
    }
    if let Some(v) = g.get_u64("general.sampling.top_k") {
        p.top_k = v as usize;
        any = true;
    }
    if let Some(v) = g.get_f32("general.sampling.min_p") {
        p.min_p = v;
        any = true;
    }
    any.then_some(p)
}

/// llama.cpp `llama_ftype` names.
fn file_type_name(t: u64) -> String {
    match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return format!("type {t}"),
    }
    .to_string()
}
