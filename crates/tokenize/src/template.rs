//! Chat templates: the Jinja dialect Hugging Face `apply_chat_template` uses, on minijinja.
//!
//! Mirrors transformers `chat_template_utils._compile_jinja_template`: `trim_blocks` and
//! `lstrip_blocks` on, trailing newline dropped, loop controls, `raise_exception(msg)`,
//! `strftime_now(fmt)` and a `tojson` that writes like Python's `json.dumps(ensure_ascii=False)`
//! (", " and ": " separators, optional `indent` and `sort_keys`). Python string/dict methods
//! (`.strip()`, `.startswith()`, `.items()`, ...) come from `minijinja_contrib::pycompat`.

use crate::error::{Result, TokenizeError};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The ChatML template used when a model ships none (`ChatTemplate::chatml`).
const CHATML: &str = "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}";

/// A compiled chat template with the BOS/EOS strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

fn template_err(stage: &'static str, e: &Error) -> TokenizeError {
    let mut message = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    TokenizeError::Template { stage, message }
}

impl ChatTemplate {
    /// Compiles `source`; syntax errors are reported here, not at render time.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| template_err("compile", &e))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            fallback: false,
        })
    }

    /// ChatML (`<|im_start|>role\ncontent<|im_end|>\n`), for models without a template.
    pub fn chatml() -> Self {
        let mut t = Self::new(CHATML, "", "")
            .unwrap_or_else(|e| unreachable!("built-in ChatML template: {e}"));
        t.fallback = true;
        t
    }

    /// The model's own template when it has one, else ChatML.
    pub fn for_tokenizer(tok: &crate::Tokenizer) -> Result<Self> {
        match tok.chat_template() {
            Some(src) => Self::new(src, tok.bos_token_str(), tok.eos_token_str()),
            None => Ok(Self::chatml()),
        }
    }

    /// True for the built-in ChatML fallback.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Renders `messages` with `add_generation_prompt`, `bos_token`, `eos_token` and
    /// `tools = none`, as `apply_chat_template(messages, tokenize=False)` does.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| template_err("lookup", &e))?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
            tools => Value::from(()),
        };
        tmpl.render(ctx).map_err(|e| template_err("render", &e))
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

fn strftime_now(format: String) -> std::result::Result<String, Error> {
    use std::fmt::Write;
    let now = chrono::Local::now();
    let mut out = String::new();
    write!(out, "{}", now.format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("bad strftime format {format:?}"),
        )
    })?;
    Ok(out)
}

/// `tojson(x, indent=None, sort_keys=False)` with Python `json.dumps` spacing.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, &value, indent, sort_keys.unwrap_or(false), 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline(out: &mut String, indent: Option<usize>, level: usize) {
    if let Some(n) = indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    level: usize,
) -> std::result::Result<(), Error> {
    // Python: item separator ", " without indent, "," with it; key separator always ": ".
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, indent, level + 1);
                write_json(out, item, indent, sort, level + 1)?;
            }
            if !items.is_empty() {
                newline(out, indent, level);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, indent, level + 1);
                write_json_str(out, &key.to_string());
                out.push_str(": ");
                write_json(out, &v.get_item(key)?, indent, sort, level + 1)?;
            }
            if !keys.is_empty() {
                newline(out, indent, level);
            }
            out.push('}');
        }
        _ => write_json_str(out, &v.to_string()),
    }
    Ok(())
}

/// Python `repr(float)` for the common cases (`1.0`, `0.5`, `1e+20`, `NaN`, `Infinity`).
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let s = format!("{f}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_is_python_like() {
        let t = ChatTemplate::chatml();
        let env = &t.env;
        let src = r#"{{ {'b': [1, 2.5, 'é"<>'], 'a': none} | tojson }}"#;
        let out = env.render_str(src, minijinja::context! {}).unwrap();
        assert_eq!(out, r#"{"b": [1, 2.5, "é\"<>"], "a": null}"#);
        let out = env
            .render_str(
                "{{ x | tojson(indent=2) }}",
                minijinja::context! { x => vec![1, 2] },
            )
            .unwrap();
        assert_eq!(out, "[\n  1,\n  2\n]");
    }
}
