#!/usr/bin/env python3
"""Reference LoRA adapters for Baimo's adapter tests, made with Hugging Face PEFT.

For the tiny Llama (GQA) and Qwen2 (GQA, q/k/v bias) models of fixtures/tiny this script
  1. loads the model's Hugging Face folder (float32),
  2. wraps it with peft.get_peft_model(LoraConfig(r=4, lora_alpha=8, target_modules=all seven projections))
     and fills lora_A and lora_B from a seeded generator (PEFT initialises B to zero, which would make the
     adapter a no-op and the test unable to fail),
  3. saves the adapter with save_pretrained (adapter_config.json + adapter_model.safetensors, PEFT's names),
  4. records float32 logits of every position of the three fixed prompts of manifest.json, with the adapter
     active, as little-endian f32 files.
A second adapter per model uses rsLoRA scaling (alpha / sqrt(r)) and targets only q_proj and v_proj.

Usage: ~/.cache/baimo-peers/venv/bin/python tools/make_lora_refs.py [--fixtures fixtures]
"""
import argparse
import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    "lora-all": dict(r=4, lora_alpha=8, target_modules=ALL, use_rslora=False),
    "lora-qv-rs": dict(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj"], use_rslora=True),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="fixtures")
    ap.add_argument("--seed", type=int, default=20261128)
    a = ap.parse_args()
    root = Path(a.fixtures)
    manifest = json.loads((root / "tiny/manifest.json").read_text())
    prompts = next(m for m in manifest["models"] if m["name"] == "llama-gqa")["prompts"]
    out_manifest = {"generator": "tools/make_lora_refs.py", "peft": __import__("peft").__version__,
                    "prompts": prompts, "adapters": []}
    for name in ["llama-gqa", "qwen2-gqa"]:
        hf = root / "tiny" / name / "hf"
        for ai, (aname, cfg) in enumerate(ADAPTERS.items()):
            torch.manual_seed(a.seed + ai)
            base = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32, attn_implementation="eager")
            model = get_peft_model(base, LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **cfg))
            g = torch.Generator().manual_seed(a.seed + 100 + ai)
            with torch.no_grad():
                for pname, p in model.named_parameters():
                    if "lora_A" in pname or "lora_B" in pname:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            model.eval()
            out = root / "tiny" / name / aname
            model.save_pretrained(out)
            logits = []
            for i, pr in enumerate(prompts):
                with torch.no_grad():
                    l = model(torch.tensor([pr])).logits[0].float().numpy()
                f = out / f"logits-p{i}.f32"
                f.write_bytes(l.astype("<f4").tobytes())
                logits.append(str(f.relative_to(root)))
            with torch.no_grad():
                base_l = model.get_base_model()
                with model.disable_adapter():
                    plain = model(torch.tensor([prompts[-1]])).logits[0]
                adapted = model(torch.tensor([prompts[-1]])).logits[0]
            delta = float((adapted - plain).abs().max())
            out_manifest["adapters"].append({"model": name, "adapter": aname, "dir": str(out.relative_to(root)),
                                             "config": cfg, "logits": logits,
                                             "max_logit_change_vs_base": delta})
            print(f"{name}/{aname}: adapter changes logits by up to {delta:.3f}")
    out_manifest["training"] = training_refs(root, prompts, a.seed)
    (root / "tiny/lora-manifest.json").write_text(json.dumps(out_manifest, indent=1) + "\n")


def training_refs(root, prompts, seed):
    """One training step with the lora-all adapter: loss, every LoRA gradient, and the parameters after one
    torch.optim.AdamW step, for a batch of two equal-length sequences with some labels masked (-100)."""
    from safetensors.torch import save_file
    from peft import PeftModel
    out = []
    seq = prompts[2]
    batch = torch.tensor([seq, list(reversed(seq))])
    labels = batch.clone()
    labels[0, :5] = -100   # e.g. a prompt that is not trained on
    labels[1, 12:] = -100
    opt_cfg = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    for name in ["llama-gqa", "qwen2-gqa"]:
        hf = root / "tiny" / name / "hf"
        base = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32, attn_implementation="eager")
        model = PeftModel.from_pretrained(base, root / "tiny" / name / "lora-all", is_trainable=True)
        model.train()
        loss = model(input_ids=batch, labels=labels).loss
        loss.backward()
        grads = {k.replace(".default", ""): p.grad.detach().clone().contiguous()
                 for k, p in model.named_parameters() if p.requires_grad}
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **opt_cfg)
        opt.step()
        after = {k.replace(".default", ""): p.detach().clone().contiguous()
                 for k, p in model.named_parameters() if p.requires_grad}
        d = root / "tiny" / name / "lora-train"
        d.mkdir(exist_ok=True)
        save_file(grads, str(d / "grads.safetensors"))
        save_file(after, str(d / "after_step.safetensors"))
        out.append({"model": name, "adapter": f"tiny/{name}/lora-all", "input_ids": batch.tolist(),
                    "labels": labels.tolist(), "loss": float(loss), "optimizer": opt_cfg,
                    "grads": f"tiny/{name}/lora-train/grads.safetensors",
                    "after_step": f"tiny/{name}/lora-train/after_step.safetensors"})
        print(f"{name}: training loss {float(loss):.6f}, {len(grads)} LoRA tensors")
    return out


if __name__ == "__main__":
    main()
