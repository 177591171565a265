#!/usr/bin/env python3
"""Reference outputs of llama.cpp on the real trained models (greedy decoding, perplexity).

Models (see ../shared/refdata/REGISTRY-MODELS.md for how they are assembled and their sha256):
  qwen2.5-coder-0.5b-instruct-q4_k_m.gguf   (qwen2, Q4_K_M)
  smollm2-135m-instruct-q4_1.gguf           (llama, Q4_1)

Writes
  fixtures/real/greedy.json       per model and prompt: rendered chat prompt, prompt token ids,
                                  32 greedy tokens with the top-5 log-probabilities of every step
  fixtures/real/perplexity.json   llama-perplexity on fixtures/real/ppl.txt at -c 128 and -c 256

Conventions (the same as llama-cpp-python's chat completion with the GGUF's template):
  * template: GGUF metadata `tokenizer.chat_template`, rendered with jinja2 (sandboxed,
    trim_blocks, lstrip_blocks, loopcontrols) with messages=[{"role":"user","content":...}],
    add_generation_prompt=True, bos_token / eos_token = the text of the vocab's BOS / EOS token,
    no system message (the template's default system prompt applies).
  * tokenization: Llama.tokenize(prompt.encode(), add_bos=<llama_vocab_get_add_bos>, special=True)
    (both models here have tokenizer.ggml.add_bos_token = false, so no BOS is added).
  * decoding: the prompt in one batch, then one token at a time; the next token is the argmax of
    llama.cpp's logits (the first index on ties, as llama.cpp's greedy sampler); no penalties.
    Stops after 32 tokens or at an end-of-generation token (llama_vocab_is_eog), which is recorded.

Usage:
  PY=~/.cache/baimo-peers/venv/bin/python
  $PY tools/make_real_refs.py --models-dir /work/models-dl \
      --perplexity-bin ~/.cache/baimo-peers/llama.cpp-build/bin/llama-perplexity
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np

MODELS = [
    dict(name="qwen2.5-coder-0.5b-instruct-q4_k_m", file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
         sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    dict(name="smollm2-135m-instruct-q4_1", file="smollm2-135m-instruct-q4_1.gguf",
         sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
]

PROMPTS = [
    dict(id="summary-en", lang="en", text=(
        "Summarize the following text in one sentence:\n\n"
        "Memory bandwidth, not arithmetic, is usually what limits the speed of text generation on an "
        "ordinary computer. For every new token the program has to read all of the weights once, so a "
        "smaller model file gives faster answers.")),
    dict(id="summary-zh", lang="zh", text="请用一句话总结：大模型的热度会不会和元宇宙一样昙花一现？"),
    dict(id="email-en", lang="en", text=(
        "Write a short email to my team saying that Friday's meeting is moved to Monday at 10 am.")),
    dict(id="email-zh", lang="zh", text="写一封简短的邮件，通知同事们明天下午三点在会议室开会。"),
    dict(id="translate-zh-en", lang="zh", text=(
        "Translate into English: 通用大模型有很强的能力，但并不能解决很多企业的具体问题。")),
    dict(id="translate-en-zh", lang="en", text=(
        "把下面这句话翻译成中文：The weather is nice today, so let's go for a walk in the park.")),
    dict(id="code-python", lang="en", text="Write a Python function that checks whether a number is prime."),
    dict(id="question-en", lang="en", text="What is the capital of France?"),
    dict(id="question-zh", lang="zh", text="天空为什么是蓝色的？"),
]

N_GEN = 32
TOP_K = 5
LLAMA_OPTS = dict(n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2, logits_all=True,
                  type_k=0, type_v=0, flash_attn=False, seed=0, verbose=False)  # F32 K/V cache
PPL_CTX = [128, 256]


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def disable_extra_buffer_types():
    """llama_model_params.use_extra_bufts = false for every Llama() (llama-cli's --no-repack).

    The extra CPU buffer types are AMX and the weight-repacking kernels. On this machine the CPU
    reports AMX, llama.cpp is built with -march=native, and the AMX kernels die with SIGILL
    (tilezero without kernel permission), so they stay off; it also keeps the results the same on
    machines with and without AMX/repack support."""
    import llama_cpp
    import llama_cpp.llama as llama_mod
    if getattr(llama_cpp, "_baimo_patched", False):
        return
    orig = llama_cpp.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p
    llama_cpp.llama_model_default_params = params
    llama_mod.llama_cpp.llama_model_default_params = params
    llama_cpp._baimo_patched = True


def render_chat(template: str, messages: list[dict], bos: str, eos: str) -> str:
    """As llama_cpp.llama_chat_format.Jinja2ChatFormatter (jinja2 sandbox, trim/lstrip blocks)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from datetime import datetime

    def raise_exception(msg):
        raise ValueError(msg)

    env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
        json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    return env.from_string(template).render(
        messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=True,
        raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f),
        tools=None, tool_choice=None, functions=None, function_call=None)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def greedy(llm, prompt_ids: list[int]) -> dict:
    import llama_cpp
    vocab = llm._model.vocab
    llm.reset()
    llm.eval(prompt_ids)
    out_ids, steps = [], []
    stop = "length"
    for step in range(N_GEN):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        lp = log_softmax(logits)
        order = np.argsort(-lp, kind="stable")[:TOP_K]
        tok = int(np.argmax(logits))
        steps.append({"top": [[int(i), round(float(lp[i]), 6)] for i in order],
                      "chosen_logit": float(logits[tok]),
                      "margin_to_second": round(float(lp[order[0]] - lp[order[1]]), 6)})
        out_ids.append(tok)
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            stop = "eog"
            break
        llm.eval([tok])
    text = llm.detokenize(out_ids, special=False).decode("utf-8", errors="replace")
    text_special = llm.detokenize(out_ids, special=True).decode("utf-8", errors="replace")
    return {"output_ids": out_ids, "output_text": text, "output_text_with_special": text_special,
            "stop": stop, "n_generated": len(out_ids), "steps": steps}


def check_with_llama_sampler(llm, prompt_ids: list[int], n: int) -> list[int]:
    """llama.cpp's own sampler chain (top_k=1, temperature 0, no penalties) for a cross-check."""
    llm.reset()
    got = []
    for tok in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                            reset=True):
        got.append(int(tok))
        if len(got) >= n or llm.token_eos() == tok:
            break
    return got


def greedy_refs(models_dir: Path, out: Path):
    disable_extra_buffer_types()
    from gguf import GGUFReader
    from llama_cpp import Llama
    import llama_cpp
    import importlib.metadata as md

    res = {"format": 1, "generator": "tools/make_real_refs.py",
           "llama_cpp_python": md.version("llama_cpp_python"),
           "llama_options": {**{k: v for k, v in LLAMA_OPTS.items() if k != "verbose"}, "use_extra_bufts": False},
           "conventions": {
               "template": "GGUF tokenizer.chat_template rendered with jinja2 like llama-cpp-python's "
                           "Jinja2ChatFormatter: trim_blocks, lstrip_blocks, add_generation_prompt=True, "
                           "bos_token/eos_token = text of the vocab's BOS/EOS token, single user message, "
                           "no system message",
               "tokenize": "llama_tokenize(prompt, add_special=llama_vocab_get_add_bos(vocab), parse_special=True)",
               "decode": "prompt in one batch, then one token per llama_decode; argmax of the logits "
                         "(first index on ties); temperature 0, no repeat/presence/frequency penalty",
               "stop": f"{N_GEN} tokens or the first token with llama_vocab_is_eog (included in output_ids)",
               "top": f"top {TOP_K} [token id, natural-log probability] of each step, from llama.cpp's f32 logits",
           },
           "models": []}
    for m in MODELS:
        path = models_dir / m["file"]
        log("==", path)
        digest = sha256_file(path)
        if digest != m["sha256"]:
            raise SystemExit(f"sha256 mismatch for {path}: {digest}")
        r = GGUFReader(str(path))
        template = r.fields["tokenizer.chat_template"].contents()
        llm = Llama(model_path=str(path), **LLAMA_OPTS)
        vocab = llm._model.vocab
        bos_id, eos_id = llm.token_bos(), llm.token_eos()
        bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        eog = [i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]
        entry = {"name": m["name"], "file": m["file"], "sha256": digest,
                 "arch": r.fields["general.architecture"].contents(),
                 "tokenizer_pre": r.fields["tokenizer.ggml.pre"].contents(),
                 "add_bos": add_bos, "bos_id": bos_id, "eos_id": eos_id, "bos_token": bos, "eos_token": eos,
                 "eog_ids": eog, "n_vocab": llm.n_vocab(), "prompts": []}
        for p in PROMPTS:
            msgs = [{"role": "user", "content": p["text"]}]
            prompt = render_chat(template, msgs, bos, eos)
            ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
            g = greedy(llm, ids)
            log(f"   {p['id']}: {len(ids)} prompt tokens, {g['n_generated']} out ({g['stop']}): "
                f"{g['output_text'][:70]!r}")
            entry["prompts"].append({"id": p["id"], "lang": p["lang"], "messages": msgs,
                                     "prompt_text": prompt, "prompt_ids": ids, **g})
        # cross-check the argmax loop against llama.cpp's own greedy sampler on two prompts
        checks = []
        for pe in entry["prompts"][:2]:
            got = check_with_llama_sampler(llm, pe["prompt_ids"], len(pe["output_ids"]))
            checks.append({"id": pe["id"], "same": got == pe["output_ids"][:len(got)], "n": len(got)})
        entry["sampler_crosscheck"] = checks
        log("   llama.cpp sampler cross-check:", checks)
        res["models"].append(entry)
        del llm
    out.write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    log("wrote", out)


# --------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------

def parse_ppl(text: str) -> dict:
    chunks = [float(x) for x in re.findall(r"\[\d+\]\s*([0-9.]+|nan|inf)", text)]
    fm = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
    info = {}
    m = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", text)
    if m:
        info = {"n_chunks": int(m.group(1)), "n_ctx": int(m.group(2)), "batch_size": int(m.group(3)),
                "n_seq": int(m.group(4))}
    return {"final_ppl": float(fm.group(1)) if fm else None, "final_ppl_err": float(fm.group(2)) if fm else None,
            "running_ppl_after_chunk": chunks, **info}


def ppl_python(path: Path, text: str, n_ctx: int) -> dict:
    """llama-perplexity's algorithm through llama-cpp-python: chunks of n_ctx tokens, BOS replaces the
    first token of a chunk when the vocab adds BOS, only the second half of each chunk is scored."""
    from llama_cpp import Llama
    import llama_cpp
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=2,
                n_threads_batch=2, logits_all=True, verbose=False)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab))
    toks = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    n_chunk = len(toks) // n_ctx
    first = n_ctx // 2
    nll, cnt, running = 0.0, 0, []
    for c in range(n_chunk):
        chunk = list(toks[c * n_ctx:(c + 1) * n_ctx])
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        for j in range(first, n_ctx - 1):
            lp = log_softmax(np.array(llm.scores[j]))
            nll -= lp[chunk[j + 1]]
            cnt += 1
        running.append(math.exp(nll / cnt))
    return {"n_tokens": len(toks), "n_chunks": n_chunk, "final_ppl": running[-1] if running else None,
            "running_ppl_after_chunk": running, "add_bos": add_bos}


def perplexity_refs(models_dir: Path, ppl_bin: Path | None, txt: Path, out: Path):
    disable_extra_buffer_types()
    text = txt.read_text(encoding="utf-8")
    previous = {}
    if out.exists():
        old = json.loads(out.read_text(encoding="utf-8"))
        if old.get("text_sha256") == hashlib.sha256(text.encode("utf-8")).hexdigest():
            for om in old["models"]:
                for run in om["runs"]:
                    py = run.get("python_crosscheck") if run.get("command") else run
                    if py and py.get("final_ppl") is not None:
                        previous[(om["name"], run["n_ctx"])] = py
    res = {"format": 1, "generator": "tools/make_real_refs.py", "text_file": "real/ppl.txt",
           "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
           "note": "running_ppl_after_chunk[i] is llama-perplexity's printed [i+1] value: the perplexity over "
                   "all chunks so far (second half of each chunk scored), not the chunk's own perplexity. "
                   "--no-repack (use_extra_bufts=false): llama.cpp built with -march=native dies with SIGILL "
                   "in its AMX kernels on the development machine without it",
           "models": []}
    for m in MODELS:
        path = models_dir / m["file"]
        entry = {"name": m["name"], "file": m["file"], "runs": []}
        from llama_cpp import Llama
        llm = Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
        entry["n_tokens_text"] = len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        del llm
        for c in PPL_CTX:
            if ppl_bin and ppl_bin.exists():
                cmd = [str(ppl_bin), "-m", str(path), "-f", str(txt), "-c", str(c), "-t", "2", "--no-repack"]
                shown = f"llama-perplexity -m {m['file']} -f {txt} -c {c} -t 2 --no-repack"
                log("  $", " ".join(cmd))
                r = subprocess.run(cmd, capture_output=True, text=True)
                full = r.stdout + "\n" + r.stderr
                parsed = parse_ppl(full)
                if r.returncode != 0 or parsed["final_ppl"] is None:
                    raise SystemExit(f"llama-perplexity failed:\n{full[-3000:]}")
                run = {"n_ctx": c, "tool": "llama-perplexity", "command": shown, "command_as_run": " ".join(cmd),
                       **parsed}
                # also the same computation through llama-cpp-python, as a cross-check
                # (reused from an earlier run of this script on the same text when there is one)
                py = previous.get((m["name"], c)) or ppl_python(path, text, c)
                run["python_crosscheck"] = {"final_ppl": py["final_ppl"], "n_chunks": py["n_chunks"],
                                            "running_ppl_after_chunk": py["running_ppl_after_chunk"]}
            else:
                py = ppl_python(path, text, c)
                run = {"n_ctx": c, "tool": "llama-cpp-python (llama-perplexity algorithm, binary not built)",
                       "command": None, **py}
            log(f"   {m['name']} c={c}: PPL {run['final_ppl']}")
            entry["runs"].append(run)
        res["models"].append(entry)
    out.write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    log("wrote", out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default="/work/models-dl")
    ap.add_argument("--out", default="fixtures/real")
    ap.add_argument("--perplexity-bin",
                    default=os.path.expanduser("~/.cache/baimo-peers/llama.cpp-build/bin/llama-perplexity"))
    ap.add_argument("--skip-greedy", action="store_true")
    ap.add_argument("--skip-ppl", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = Path(args.models_dir)
    if not args.skip_greedy:
        greedy_refs(md, out / "greedy.json")
    if not args.skip_ppl:
        perplexity_refs(md, Path(args.perplexity_bin) if args.perplexity_bin else None, out / "ppl.txt",
                        out / "perplexity.json")


if __name__ == "__main__":
    main()
