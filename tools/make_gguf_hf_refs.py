#!/usr/bin/env python3
"""What Hugging Face transformers makes of the folders `baimo merge model.gguf ADAPTER -o DIR` writes.

For the tiny Llama (GQA) and Qwen2 (GQA, q/k/v bias) models of fixtures/tiny this script
  1. runs `baimo merge tiny/NAME/NAME-F32.gguf tiny/NAME/lora-all -o WORK/NAME --outtype f32`
     (the GGUF llama.cpp converted from tiny/NAME/hf, the PEFT adapter of tools/make_lora_refs.py),
  2. loads WORK/NAME with AutoModelForCausalLM.from_pretrained (float32, eager attention) and
     AutoTokenizer.from_pretrained,
  3. records float32 logits of every position of the three prompts of lora-manifest.json as
     tiny/NAME/lora-all/merged-hf-p{i}.f32 and how far they are from PEFT's (base + adapter unmerged),
  4. records AutoTokenizer's ids for the `tokenize` texts of manifest.json (add_special_tokens=False; the
     manifest also has llama.cpp's ids for them, which must be the same), for "Hello" with
     add_special_tokens=True (BOS where the GGUF adds one), and for a chat rendered by apply_chat_template,
and writes it all to tiny/gguf-hf-manifest.json. It stops with an error where transformers disagrees with
llama.cpp or PEFT.

Usage (from the repository root, after `cargo build -p baimo`):
  ~/.cache/baimo-peers/venv/bin/python tools/make_gguf_hf_refs.py [--baimo target/debug/baimo]
"""
import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MODELS = ["llama-gqa", "qwen2-gqa"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好, who are you?"},
        {"role": "assistant", "content": "A tiny model."}, {"role": "user", "content": "Hello again"}]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="fixtures")
    ap.add_argument("--baimo", default="target/debug/baimo")
    ap.add_argument("--work", default="target/fixture-work/gguf-hf")
    a = ap.parse_args()
    root = Path(a.fixtures)
    manifest = json.loads((root / "tiny/manifest.json").read_text())
    lora = json.loads((root / "tiny/lora-manifest.json").read_text())
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out = {"generator": "tools/make_gguf_hf_refs.py", "transformers": __import__("transformers").__version__,
           "prompts": lora["prompts"], "chat": CHAT, "models": []}
    for name in MODELS:
        gguf = root / "tiny" / name / f"{name}-F32.gguf"
        adapter = root / "tiny" / name / "lora-all"
        folder = work / name
        subprocess.run([a.baimo, "merge", str(gguf), str(adapter), "-o", str(folder), "--outtype", "f32",
                        "--force"], check=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        peft = next(x for x in lora["adapters"] if x["model"] == name and x["adapter"] == "lora-all")
        logits, errs = [], []
        for i, prompt in enumerate(lora["prompts"]):
            with torch.no_grad():
                got = model(torch.tensor([prompt])).logits[0].float().numpy()
            want = np.fromfile(root / peft["logits"][i], dtype="<f4").reshape(got.shape)
            errs.append(float(np.abs(got - want).max() / np.abs(want).max()))
            f = adapter / f"merged-hf-p{i}.f32"
            f.write_bytes(got.astype("<f4").tobytes())
            logits.append(str(f.relative_to(root)))
        assert max(errs) < 1e-4, f"{name}: transformers on the merged folder vs PEFT: {errs}"

        tok = AutoTokenizer.from_pretrained(folder)
        entry = next(m for m in manifest["models"] if m["name"] == name)
        tokenize = []
        for case in entry["tokenize"]:
            ids = tok(case["text"], add_special_tokens=False)["input_ids"]
            assert ids == case["llamacpp_ids"], f"{name} {case['text']!r}: {ids} vs llama.cpp {case['llamacpp_ids']}"
            tokenize.append({"text": case["text"], "ids": ids})
        chat_text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
        out["models"].append({
            "model": name, "gguf": str(gguf.relative_to(root)), "adapter": str(adapter.relative_to(root)),
            "tokenizer_class": type(tok).__name__, "logits": logits, "max_rel_err_vs_peft": errs,
            "tokenize": tokenize,
            "hello_with_specials": tok("Hello")["input_ids"],
            "chat_text": chat_text,
            "chat_ids": tok(chat_text, add_special_tokens=False)["input_ids"],
        })
        print(f"{name}: {type(tok).__name__}, logits vs PEFT max rel err {max(errs):.1e}, "
              f"{len(tokenize)} texts tokenized as llama.cpp does")
    (root / "tiny/gguf-hf-manifest.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
