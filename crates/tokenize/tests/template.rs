//! Chat templates rendered with minijinja must equal what HF's jinja2 setup produces. The
//! expected strings were written by reading each template, and cross-checked with Python
//! jinja2 3.x using transformers' environment settings (trim_blocks, lstrip_blocks).

mod common;

use baimo_tokenize::{ChatTemplate, Message, TokenizeError, Tokenizer};

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(p).unwrap()
}

fn user(text: &str) -> Message {
    Message::new("user", text)
}

const QWEN_DEFAULT_SYSTEM: &str =
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n";

#[test]
fn qwen25_default_system_prompt() {
    let t = ChatTemplate::new(&fixture("qwen2.5-coder-instruct.jinja"), "", "<|im_end|>").unwrap();
    assert!(!t.is_fallback());
    let out = t.render(&[user("hi")], true).unwrap();
    assert_eq!(
        out,
        format!("{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    );
    let out = t.render(&[user("hi")], false).unwrap();
    assert_eq!(
        out,
        format!("{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nhi<|im_end|>\n")
    );
}

#[test]
fn qwen25_system_and_multi_turn() {
    let t = ChatTemplate::new(&fixture("qwen2.5-coder-instruct.jinja"), "", "<|im_end|>").unwrap();
    let msgs = [
        Message::new("system", "You write Rust."),
        user("Write hello world"),
        Message::new("assistant", "fn main() {}"),
        user("Thanks!"),
    ];
    let out = t.render(&msgs, true).unwrap();
    let want = "<|im_start|>system\nYou write Rust.<|im_end|>\n\
                <|im_start|>user\nWrite hello world<|im_end|>\n\
                <|im_start|>assistant\nfn main() {}<|im_end|>\n\
                <|im_start|>user\nThanks!<|im_end|>\n\
                <|im_start|>assistant\n";
    assert_eq!(out, want);
}

#[test]
fn smollm2_template() {
    let t = ChatTemplate::new(
        &fixture("smollm2-instruct.jinja"),
        "<|im_start|>",
        "<|im_end|>",
    )
    .unwrap();
    let out = t.render(&[user("hi")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = t
        .render(&[Message::new("system", "Be brief."), user("hi")], false)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    );
}

#[test]
fn qwen2_vocab_gguf_template_and_special_parsing() {
    let tok = Tokenizer::from_gguf_path(&common::vocab_gguf("qwen2")).unwrap();
    let t = ChatTemplate::for_tokenizer(&tok).unwrap();
    assert!(!t.is_fallback());
    let prompt = t.render(&[user("hi")], true).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&prompt, true, true).unwrap();
    assert_eq!(
        ids[0], 151644,
        "<|im_start|> is one token with parse_special"
    );
    assert_eq!(ids.iter().filter(|&&id| id == 151644).count(), 3);
    assert_eq!(ids.iter().filter(|&&id| id == 151645).count(), 2);
    let plain = tok.encode(&prompt, false, false).unwrap();
    assert!(
        !plain.contains(&151644) && !plain.contains(&151645),
        "plain text without parse_special"
    );
    assert_eq!(tok.decode(&ids, false).unwrap(), prompt);
    assert!(tok.is_eog(151645) && tok.is_eog(151643));
}

/// A Llama 3 style template (as in Meta's tokenizer_config.json, without the date logic).
const LLAMA3_TEMPLATE: &str = "{{- bos_token }}\n\
{%- for message in messages %}\n\
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n\
{%- endfor %}\n\
{%- if add_generation_prompt %}\n\
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n\
{%- endif %}\n";

#[test]
fn llama3_template_reproduces_meta_vector() {
    let tok = Tokenizer::from_gguf_path(&common::vocab_gguf("llama-bpe")).unwrap();
    assert_eq!(tok.bos_token_str(), "<|begin_of_text|>");
    let t = ChatTemplate::new(LLAMA3_TEMPLATE, tok.bos_token_str(), tok.eos_token_str()).unwrap();
    let msgs = [
        Message::new("system", "This is a test sentence."),
        user("This is a response.  "),
    ];
    let prompt = t.render(&msgs, true).unwrap();
    assert_eq!(
        prompt,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nThis is a test sentence.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nThis is a response.<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // The template already has BOS, so encode without adding another.
    let ids = tok.encode(&prompt, false, true).unwrap();
    let meta = [
        128000, 128006, 9125, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009, 128006, 882,
        128007, 271, 2028, 374, 264, 2077, 13, 128009, 128006, 78191, 128007, 271,
    ];
    assert_eq!(ids, meta);
}

#[test]
fn raise_exception_is_a_clear_error() {
    let src = "{%- if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_eq!(t.render(&[user("hi")], false).unwrap(), "ok");
    let err = t.render(&[Message::new("system", "x")], false).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizeError::Template {
                stage: "render",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("System role not supported"),
        "{err}"
    );
}

#[test]
fn syntax_errors_fail_at_compile() {
    let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
    assert!(
        matches!(
            err,
            TokenizeError::Template {
                stage: "compile",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn python_methods_and_helpers() {
    let src = "{% for m in messages %}{% if m.content.startswith('  ') %}[{{ m.content.strip() | upper }}]{% endif %}\
               {% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}{% endfor %}\
               {{ strftime_now('%Y') | length }}|{{ messages | tojson }}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let out = t.render(&[user("  hi ")], false).unwrap();
    assert_eq!(out, r#"[HI]a=14|[{"role": "user", "content": "  hi "}]"#);
}

#[test]
fn chatml_fallback() {
    let t = ChatTemplate::chatml();
    assert!(t.is_fallback());
    let out = t
        .render(&[Message::new("system", "S"), user("hi")], true)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}
