//! `baimo chat`: a terminal conversation that keeps its context; each turn re-renders the whole conversation
//! through the model's template and only prefills what the KV cache does not already hold.

use std::io::{BufRead, Write};

use anyhow::Result;
use baimo_engine::Session;
use baimo_store::ModelStore;
use baimo_tokenize::Message;
use clap::Args;

use crate::commands::{load_model, template_wants_bos};
use crate::sampling::GenFlags;

#[derive(Args)]
pub struct ChatArgs {
    /// Model path or name (default model when omitted).
    pub model: Option<String>,
    /// Initial system message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub gen: GenFlags,
}

pub fn chat(store: &ModelStore, a: ChatArgs) -> Result<()> {
    let m = load_model(store, a.model.as_deref(), &a.gen)?;
    let name = m
        .info
        .name
        .clone()
        .unwrap_or_else(|| m.info.path.display().to_string());
    eprintln!(
        "baimo chat · {name} · loaded in {:.2}s",
        m.load_time.as_secs_f64()
    );
    if m.template.is_fallback() {
        eprintln!("note: the model has no chat template; using the built-in ChatML template");
    }
    eprintln!("commands: /reset  /system TEXT  /exit");
    let ctx = a.gen.ctx_for(m.model.config().max_position_embeddings);
    let opts = a.gen.options(m.defaults.as_ref());
    let mut session = Session::new(&m.model, ctx);
    let mut system = a.system.clone();
    let mut history: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        print!("> ");
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        match line.trim() {
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clear();
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        if let Some(rest) = line.trim().strip_prefix("/system") {
            system = Some(rest.trim().to_string()).filter(|s| !s.is_empty());
            history.clear();
            session.reset();
            eprintln!("(system message set; conversation cleared)");
            continue;
        }
        history.push(Message {
            role: "user".into(),
            content: line.to_string(),
        });
        let mut msgs = Vec::new();
        if let Some(s) = &system {
            msgs.push(Message {
                role: "system".into(),
                content: s.clone(),
            });
        }
        msgs.extend(history.iter().cloned());
        let text = m.template.render(&msgs, true)?;
        let tokens = m
            .tokenizer
            .encode(&text, template_wants_bos(&m, &text), true)?;
        if tokens.len() >= ctx {
            eprintln!("error: the conversation is {} tokens but the context holds {ctx}; /reset to start over", tokens.len());
            history.pop();
            continue;
        }
        let g = session.generate(&m.model, &m.tokenizer, &tokens, &opts, |t| {
            let _ = stdout.write_all(t.as_bytes());
            let _ = stdout.flush();
            true
        })?;
        println!();
        let secs = g.decode_time.as_secs_f64();
        eprintln!(
            "[{} tokens, {:.1} tok/s; prompt {} tokens ({} cached)]",
            g.completion_tokens(),
            if secs > 0.0 {
                g.completion_tokens() as f64 / secs
            } else {
                0.0
            },
            g.prompt_tokens,
            g.cached_tokens
        );
        history.push(Message {
            role: "assistant".into(),
            content: g.text.clone(),
        });
    }
    Ok(())
}
