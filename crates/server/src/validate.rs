//! Request validation, separate from inference (as TGI's `Validation`): every OpenAI field is checked against
//! the range OpenAI documents, and turned into the engine's [`GenerateOptions`]. Anything rejected here is a 400
//! that names the field.
//!
//! Sampling defaults are OpenAI's, not llama.cpp's: temperature 1, top-p 1, no top-k, no min-p, no penalties.

use baimo_engine::{GenerateOptions, SamplingParams};
use baimo_tokenize::Message;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::openai::{ChatRequest, CompletionRequest, SamplingFields};

/// Most choices one request may ask for (`n`), as OpenAI's own limit on chat completions is 128 but a
/// CPU server would rather not queue that many sequences for one client.
pub const MAX_N: i64 = 16;
/// Most stop strings, as OpenAI.
pub const MAX_STOP: usize = 4;
/// Most alternatives per position: chat `top_logprobs` (OpenAI: 20) and legacy `logprobs` (OpenAI: 5).
pub const MAX_TOP_LOGPROBS: i64 = 20;
pub const MAX_LEGACY_LOGPROBS: i64 = 5;
/// Most sequences one legacy completions request fans out to (prompts × n).
pub const MAX_SEQUENCES: usize = 64;

/// What the chat and completions handlers need after validation.
#[derive(Debug, Clone)]
pub struct Common {
    pub model: Option<String>,
    /// `max_tokens` is `None` here when the request left it out; it is filled from the context left.
    pub opts: GenerateOptions,
    pub max_tokens: Option<usize>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

impl Common {
    /// The options of choice `i`: with a seed, choice `i` draws with `seed + i` so the choices differ but each
    /// is reproducible.
    pub fn options_for(&self, i: usize, default_max_tokens: usize) -> GenerateOptions {
        let mut o = self.opts.clone();
        o.sampling.seed = o.sampling.seed.map(|s| s.wrapping_add(i as u64));
        o.max_tokens = self.max_tokens.unwrap_or(default_max_tokens);
        o
    }
}

#[derive(Debug, Clone)]
pub struct ChatPlan {
    pub common: Common,
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct CompletionPlan {
    pub common: Common,
    pub prompts: Vec<PromptInput>,
    pub echo: bool,
    /// Legacy `logprobs`: alternatives per position.
    pub logprobs: Option<usize>,
}

pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "the request body is not valid JSON"
        } else {
            "invalid request"
        };
        ApiError::invalid(format!("{what}: {e}"))
    })
}

pub fn chat(req: ChatRequest) -> ApiResult<ChatPlan> {
    if req.messages.is_empty() {
        return Err(ApiError::param(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::param(
                    &format!("messages[{i}].role"),
                    format!("unsupported role `{other}` in messages[{i}]: expected system, developer, user or assistant"),
                ))
            }
        };
        let content = message_content(m.content.as_ref(), role, i)?;
        messages.push(Message::new(role, content));
    }
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::param(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ))
        }
        (false, None) => None,
        (true, k) => {
            let k = k.unwrap_or(0);
            if !(0..=MAX_TOP_LOGPROBS).contains(&k) {
                return Err(ApiError::param(
                    "top_logprobs",
                    format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                ));
            }
            Some(k as usize)
        }
    };
    let max_tokens = match req.max_completion_tokens {
        Some(v) => Some(positive("max_completion_tokens", v)?),
        None => req
            .max_tokens
            .map(|v| positive("max_tokens", v))
            .transpose()?,
    };
    let mut common = common(
        req.model,
        &req.sampling,
        req.stream,
        req.stream_options.as_ref(),
    )?;
    common.max_tokens = max_tokens;
    common.opts.logprobs = logprobs;
    Ok(ChatPlan { common, messages })
}

pub fn completion(req: CompletionRequest) -> ApiResult<CompletionPlan> {
    let prompts = prompts(&req.prompt)?;
    let echo = req.echo.unwrap_or(false);
    // `max_tokens: 0` with `echo` scores a prompt without generating, as OpenAI allows.
    let max_tokens = match req.max_tokens {
        Some(0) if echo => Some(0),
        Some(v) => Some(positive("max_tokens", v)?),
        None => Some(16),
    };
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_LEGACY_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::param(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_LEGACY_LOGPROBS}, got {k}"),
            ))
        }
    };
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param("suffix", "`suffix` is not supported"));
    }
    let mut common = common(
        req.model,
        &req.sampling,
        req.stream,
        req.stream_options.as_ref(),
    )?;
    if let Some(b) = req.best_of {
        if b != common.n as i64 {
            return Err(ApiError::param(
                "best_of",
                "`best_of` is not supported unless it equals `n`",
            ));
        }
    }
    if prompts.len() * common.n > MAX_SEQUENCES {
        return Err(ApiError::param(
            "prompt",
            format!(
                "{} prompts × n = {} asks for more than {MAX_SEQUENCES} completions",
                prompts.len(),
                common.n
            ),
        ));
    }
    common.max_tokens = max_tokens;
    common.opts.logprobs = logprobs;
    Ok(CompletionPlan {
        common,
        prompts,
        echo,
        logprobs,
    })
}

fn message_content(content: Option<&Value>, role: &str, i: usize) -> ApiResult<String> {
    let param = || format!("messages[{i}].content");
    match content {
        None | Some(Value::Null) if role == "assistant" => Ok(String::new()),
        None | Some(Value::Null) => Err(ApiError::param(
            &param(),
            format!("messages[{i}] ({role}) has no content"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str);
                match (kind, p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some("text"), None) => {
                        return Err(ApiError::param(
                            &format!("messages[{i}].content[{j}].text"),
                            format!(
                                "messages[{i}].content[{j}] is a text part without a `text` string"
                            ),
                        ))
                    }
                    (Some(other), _) => {
                        return Err(ApiError::param(
                            &format!("messages[{i}].content[{j}].type"),
                            format!(
                                "content parts of type `{other}` are not supported (only `text`)"
                            ),
                        ))
                    }
                    (None, _) => {
                        return Err(ApiError::param(
                            &format!("messages[{i}].content[{j}]"),
                            format!(
                            "messages[{i}].content[{j}] must be an object with `type` and `text`"
                        ),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::param(
            &param(),
            format!("messages[{i}].content must be a string or an array of text parts"),
        )),
    }
}

fn prompts(v: &Value) -> ApiResult<Vec<PromptInput>> {
    let bad = || {
        ApiError::param(
            "prompt",
            "`prompt` must be a string, a list of strings, a list of token ids or a list of token-id lists",
        )
    };
    match v {
        Value::String(s) => Ok(vec![PromptInput::Text(s.clone())]),
        Value::Array(items) if items.is_empty() => {
            Err(ApiError::param("prompt", "`prompt` must not be empty"))
        }
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(|s| s.as_str().map(|s| PromptInput::Text(s.to_string())))
            .collect()),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            Ok(vec![PromptInput::Tokens(token_ids(items)?)])
        }
        Value::Array(items) => items
            .iter()
            .map(|x| match x {
                Value::Array(ids) if !ids.is_empty() => Ok(PromptInput::Tokens(token_ids(ids)?)),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

fn token_ids(items: &[Value]) -> ApiResult<Vec<u32>> {
    items
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| ApiError::param("prompt", format!("`{x}` is not a valid token id")))
        })
        .collect()
}

fn positive(name: &str, v: i64) -> ApiResult<usize> {
    if v < 1 {
        return Err(ApiError::param(
            name,
            format!("`{name}` must be at least 1, got {v}"),
        ));
    }
    usize::try_from(v).map_err(|_| ApiError::param(name, format!("`{name}` is too large")))
}

fn in_range(name: &str, v: Option<f64>, lo: f64, hi: f64, lo_open: bool) -> ApiResult<()> {
    let Some(v) = v else { return Ok(()) };
    let ok = v.is_finite() && (if lo_open { v > lo } else { v >= lo }) && v <= hi;
    if ok {
        Ok(())
    } else {
        let open = if lo_open { "(" } else { "[" };
        Err(ApiError::param(
            name,
            format!("`{name}` must be in {open}{lo}, {hi}], got {v}"),
        ))
    }
}

fn common(
    model: Option<String>,
    f: &SamplingFields,
    stream: Option<bool>,
    stream_options: Option<&crate::openai::StreamOptions>,
) -> ApiResult<Common> {
    in_range("temperature", f.temperature, 0.0, 2.0, false)?;
    in_range("top_p", f.top_p, 0.0, 1.0, true)?;
    in_range("frequency_penalty", f.frequency_penalty, -2.0, 2.0, false)?;
    in_range("presence_penalty", f.presence_penalty, -2.0, 2.0, false)?;
    in_range("min_p", f.min_p, 0.0, 1.0, false)?;
    in_range("repetition_penalty", f.repetition_penalty, 0.0, 10.0, true)?;
    let n = f.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::param(
            "n",
            format!("`n` must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let top_k = match f.top_k {
        None => 0,
        Some(k) if k >= 0 => usize::try_from(k).unwrap_or(usize::MAX),
        // -1 means "off" in vLLM and llama.cpp's server.
        Some(-1) => 0,
        Some(k) => {
            return Err(ApiError::param(
                "top_k",
                format!("`top_k` must be 0 or more (or -1 for off), got {k}"),
            ))
        }
    };
    let seed = match &f.seed {
        None => None,
        Some(n) => Some(
            n.as_u64()
                .or_else(|| n.as_i64().map(|v| v as u64))
                .ok_or_else(|| {
                    ApiError::param("seed", format!("`seed` must be an integer, got {n}"))
                })?,
        ),
    };
    let stop = stops(f.stop.as_ref())?;
    let stream = stream.unwrap_or(false);
    if stream_options.is_some() && !stream {
        return Err(ApiError::param(
            "stream_options",
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    let include_usage = stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let sampling = SamplingParams {
        temperature: f.temperature.unwrap_or(1.0) as f32,
        top_k,
        top_p: f.top_p.unwrap_or(1.0) as f32,
        min_p: f.min_p.unwrap_or(0.0) as f32,
        repeat_penalty: f.repetition_penalty.unwrap_or(1.0) as f32,
        repeat_last_n: 64,
        presence_penalty: f.presence_penalty.unwrap_or(0.0) as f32,
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0) as f32,
        seed,
    };
    Ok(Common {
        model,
        opts: GenerateOptions {
            max_tokens: 0,
            sampling,
            stop,
            logprobs: None,
            ignore_eos: false,
        },
        max_tokens: None,
        n: n as usize,
        stream,
        include_usage,
    })
}

fn stops(v: Option<&Value>) -> ApiResult<Vec<String>> {
    let bad = || ApiError::param("stop", "`stop` must be a string or a list of strings");
    let stops = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<ApiResult<Vec<_>>>()?,
        Some(_) => return Err(bad()),
    };
    if stops.len() > MAX_STOP {
        return Err(ApiError::param(
            "stop",
            format!(
                "at most {MAX_STOP} stop sequences are allowed, got {}",
                stops.len()
            ),
        ));
    }
    Ok(stops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_req(v: Value) -> ApiResult<ChatPlan> {
        chat(serde_json::from_value(v).map_err(|e| ApiError::invalid(e.to_string()))?)
    }

    #[test]
    fn defaults_are_openai_s() {
        let p = chat_req(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        let s = &p.common.opts.sampling;
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p),
            (1.0, 1.0, 0, 0.0)
        );
        assert_eq!(p.common.n, 1);
        assert_eq!(p.common.max_tokens, None);
        assert_eq!(p.common.options_for(0, 77).max_tokens, 77);
    }

    #[test]
    fn developer_is_system_and_parts_concatenate() {
        let p = chat_req(serde_json::json!({"messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null}]}))
        .unwrap();
        assert_eq!(p.messages[0], Message::new("system", "be brief"));
        assert_eq!(p.messages[1], Message::new("user", "ab"));
        assert_eq!(p.messages[2], Message::new("assistant", ""));
    }

    #[test]
    fn seeds_step_per_choice() {
        let p = chat_req(serde_json::json!({"messages": [{"role": "user", "content": "x"}], "seed": 7, "n": 3, "max_tokens": 5})).unwrap();
        let seeds: Vec<_> = (0..3)
            .map(|i| p.common.options_for(i, 1).sampling.seed)
            .collect();
        assert_eq!(seeds, vec![Some(7), Some(8), Some(9)]);
        assert_eq!(p.common.options_for(2, 100).max_tokens, 5);
        let neg = chat_req(
            serde_json::json!({"messages": [{"role": "user", "content": "x"}], "seed": -1}),
        )
        .unwrap();
        assert_eq!(neg.common.opts.sampling.seed, Some(u64::MAX));
    }

    #[test]
    fn rejects_out_of_range() {
        let base = |extra: Value| {
            let mut v = serde_json::json!({"messages": [{"role": "user", "content": "x"}]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            chat_req(v)
        };
        for bad in [
            serde_json::json!({"temperature": 2.5}),
            serde_json::json!({"temperature": -0.1}),
            serde_json::json!({"top_p": 0}),
            serde_json::json!({"top_p": 1.5}),
            serde_json::json!({"n": 0}),
            serde_json::json!({"n": 17}),
            serde_json::json!({"max_tokens": 0}),
            serde_json::json!({"max_tokens": -5}),
            serde_json::json!({"max_completion_tokens": 0}),
            serde_json::json!({"stop": ["a", "b", "c", "d", "e"]}),
            serde_json::json!({"stop": 5}),
            serde_json::json!({"logprobs": true, "top_logprobs": 21}),
            serde_json::json!({"top_logprobs": 2}),
            serde_json::json!({"seed": 1.5}),
            serde_json::json!({"top_k": -2}),
            serde_json::json!({"stream_options": {"include_usage": true}}),
            serde_json::json!({"messages": []}),
            serde_json::json!({"messages": [{"role": "tool", "content": "x"}]}),
            serde_json::json!({"messages": [{"role": "user", "content": 5}]}),
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            serde_json::json!({"messages": [{"role": "user"}]}),
        ] {
            let e = base(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(
            base(serde_json::json!({"temperature": 0, "top_p": 1, "stop": "x", "top_k": -1}))
                .is_ok()
        );
    }

    #[test]
    fn completion_prompts() {
        let p = |v: Value| prompts(&v);
        assert_eq!(
            p(serde_json::json!("hi")).unwrap(),
            vec![PromptInput::Text("hi".into())]
        );
        assert_eq!(
            p(serde_json::json!([1, 2])).unwrap(),
            vec![PromptInput::Tokens(vec![1, 2])]
        );
        assert_eq!(
            p(serde_json::json!([[1], [2, 3]])).unwrap(),
            vec![
                PromptInput::Tokens(vec![1]),
                PromptInput::Tokens(vec![2, 3])
            ]
        );
        for bad in [
            serde_json::json!([]),
            serde_json::json!([-1]),
            serde_json::json!([1.5]),
            serde_json::json!(3),
            serde_json::json!([[]]),
            serde_json::json!(["a", 1]),
        ] {
            assert!(p(bad.clone()).is_err(), "{bad}");
        }
    }
}
