//! Training data: JSONL records in OpenAI chat (`{"messages": [...]}`), alpaca (`instruction`/`input`/
//! `output`) or sharegpt (`conversations` of `from`/`value`) form, rendered through the model's own chat
//! template so training sees exactly the prompts serving builds.

use std::path::Path;

use baimo_tokenize::{ChatTemplate, Message, Tokenizer};
use serde_json::Value;

use crate::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Auto,
    OpenAi,
    Alpaca,
    ShareGpt,
}

impl std::str::FromStr for DataFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "auto" => DataFormat::Auto,
            "openai" | "messages" => DataFormat::OpenAi,
            "alpaca" => DataFormat::Alpaca,
            "sharegpt" => DataFormat::ShareGpt,
            _ => {
                return Err(format!(
                    "unknown data format `{s}` (auto, openai, alpaca, sharegpt)"
                ))
            }
        })
    }
}

/// A record that could not be used, with its 1-based line number.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    pub line: usize,
    pub reason: String,
}

/// One tokenized training sequence: `labels[i]` is the id the model should predict *at* position i (the
/// same as `tokens[i]`, HF style: the shift happens in the loss), or -100 where no loss is taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Example {
    /// Tokens that contribute to the loss (every label after the first position that is not -100).
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l >= 0).count()
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Parses one JSON record into chat messages.
pub fn parse_record(v: &Value, format: DataFormat) -> std::result::Result<Vec<Message>, String> {
    let format = match format {
        DataFormat::Auto if v.get("messages").is_some() => DataFormat::OpenAi,
        DataFormat::Auto if v.get("conversations").is_some() => DataFormat::ShareGpt,
        DataFormat::Auto if v.get("instruction").is_some() => DataFormat::Alpaca,
        DataFormat::Auto => {
            return Err(
                "not a chat record: expected `messages`, `conversations` or `instruction`".into(),
            )
        }
        f => f,
    };
    let msgs = match format {
        DataFormat::OpenAi => {
            let arr = v
                .get("messages")
                .and_then(Value::as_array)
                .ok_or("`messages` must be an array")?;
            arr.iter()
                .enumerate()
                .map(|(i, m)| {
                    let role =
                        str_field(m, "role").ok_or(format!("messages[{i}]: missing `role`"))?;
                    let content = match m.get("content") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(parts)) => parts
                            .iter()
                            .filter_map(|p| str_field(p, "text"))
                            .collect::<Vec<_>>()
                            .join(""),
                        _ => return Err(format!("messages[{i}]: `content` must be a string")),
                    };
                    Ok(Message::new(role, content))
                })
                .collect::<std::result::Result<Vec<_>, String>>()?
        }
        DataFormat::Alpaca => {
            let instruction = str_field(v, "instruction").ok_or("missing `instruction`")?;
            let output = str_field(v, "output").ok_or("missing `output`")?;
            let input = str_field(v, "input").unwrap_or("");
            let user = if input.is_empty() {
                instruction.to_string()
            } else {
                format!("{instruction}\n\n{input}")
            };
            let mut m = Vec::new();
            if let Some(s) = str_field(v, "system").filter(|s| !s.is_empty()) {
                m.push(Message::new("system", s));
            }
            m.push(Message::new("user", user));
            m.push(Message::new("assistant", output));
            m
        }
        DataFormat::ShareGpt => {
            let arr = v
                .get("conversations")
                .and_then(Value::as_array)
                .ok_or("`conversations` must be an array")?;
            let mut m = Vec::new();
            if let Some(s) = str_field(v, "system").filter(|s| !s.is_empty()) {
                m.push(Message::new("system", s));
            }
            for (i, t) in arr.iter().enumerate() {
                let from =
                    str_field(t, "from").ok_or(format!("conversations[{i}]: missing `from`"))?;
                let value =
                    str_field(t, "value").ok_or(format!("conversations[{i}]: missing `value`"))?;
                let role = match from {
                    "human" | "user" => "user",
                    "gpt" | "assistant" | "model" => "assistant",
                    "system" => "system",
                    other => return Err(format!("conversations[{i}]: unknown speaker `{other}`")),
                };
                m.push(Message::new(role, value));
            }
            m
        }
        DataFormat::Auto => unreachable!("resolved above"),
    };
    for (i, m) in msgs.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(format!("message {i}: unknown role `{}`", m.role));
        }
    }
    if !msgs.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message to learn from".into());
    }
    Ok(msgs)
}

/// A conversation read from a data file, with its 1-based line number.
pub type NumberedRecord = (usize, Vec<Message>);

/// Reads a JSONL file. Bad records are collected (with line numbers) rather than failing the whole file;
/// the caller decides whether to skip them or stop.
pub fn read_jsonl(
    path: &Path,
    format: DataFormat,
) -> Result<(Vec<NumberedRecord>, Vec<BadRecord>)> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Value>(line)
            .map_err(|e| format!("invalid JSON: {e}"))
            .and_then(|v| parse_record(&v, format));
        match parsed {
            Ok(m) => good.push((line_no, m)),
            Err(reason) => bad.push(BadRecord {
                line: line_no,
                reason,
            }),
        }
    }
    Ok((good, bad))
}

/// Renders `messages` with the chat template and tokenizes them; labels cover the assistant turns (the text
/// the template adds for each assistant message, end-of-turn marker included) or, with `all_tokens`, everything.
///
/// The conversation is rendered incrementally (each prefix with and without the generation prompt), so the
/// masked and trained spans are exactly what the template produces; a template that rewrites earlier turns
/// (e.g. strips old reasoning) cannot be split this way and is reported.
pub fn encode_conversation(
    messages: &[Message],
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    all_tokens: bool,
) -> std::result::Result<Example, String> {
    // Segments of text with "trained" flags.
    let mut segments: Vec<(String, bool)> = Vec::new();
    let mut done = String::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prompt = template
            .render(&messages[..i], true)
            .map_err(|e| e.to_string())?;
        let with_answer = template
            .render(&messages[..=i], false)
            .map_err(|e| e.to_string())?;
        let ctx = prompt.strip_prefix(done.as_str()).ok_or(
            "the chat template does not render conversations incrementally (earlier turns change)",
        )?;
        let answer = with_answer.strip_prefix(prompt.as_str()).ok_or(
            "the chat template renders the assistant turn differently from its generation prompt",
        )?;
        segments.push((ctx.to_string(), false));
        segments.push((answer.to_string(), true));
        done = with_answer;
    }
    let full = template
        .render(messages, false)
        .map_err(|e| e.to_string())?;
    if let Some(rest) = full.strip_prefix(done.as_str()) {
        if !rest.is_empty() {
            segments.push((rest.to_string(), false));
        }
    }
    let bos = tokenizer.bos_token_str();
    let mut tokens = Vec::new();
    let mut labels = Vec::new();
    for (k, (text, trained)) in segments.iter().enumerate() {
        if text.is_empty() {
            continue;
        }
        let add_bos = k == 0 && tokenizer.adds_bos() && (bos.is_empty() || !text.starts_with(bos));
        let ids = tokenizer
            .encode(text, add_bos, true)
            .map_err(|e| e.to_string())?;
        for id in ids {
            tokens.push(id);
            labels.push(if *trained || all_tokens {
                id as i64
            } else {
                -100
            });
        }
    }
    if tokens.len() < 2 {
        return Err("the rendered conversation has fewer than two tokens".into());
    }
    Ok(Example { tokens, labels })
}
