#!/usr/bin/env python3
"""LoRA training speed: `baimo finetune` against PyTorch + PEFT on the CPU, same model, data, batch, rank.

Both sides train one epoch over the same JSONL (OpenAI chat format) with the same batch size, LoRA rank,
alpha and target modules (q, k, v, o, gate, up, down), f32 weights, AdamW, and the same thread count, one
after the other. PyTorch renders each conversation with the tokenizer's own chat template
(`apply_chat_template`, as LLaMA-Factory/TRL do), pads each batch to its longest sequence (the usual
batched PEFT loop) and trains on every non-pad position; Baimo packs a step's sequences into one pass (no
padding) with its assistant-only labels. The fair comparison is therefore the time per optimizer step over
the same batches and the sequence tokens (prompt + answer, no padding) processed per second; the wall time
of loading plus the epoch is printed too (Baimo's whole process against PEFT's loading and epoch).

Run with the peer venv (torch, transformers, peft, gguf):
  ~/.cache/baimo-peers/venv/bin/python tools/bench_finetune_peft.py \\
      --baimo target/release/baimo --gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data fixtures/finetune/train.jsonl --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load_conversations(path: Path) -> list[list[dict]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line)["messages"])
    return out


def run_peft(args, convs) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()  # loading and the epoch (the imports above happen once per process)
    d, f = str(Path(args.gguf).parent), Path(args.gguf).name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    cfg = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    seqs = []
    for m in convs:
        text = tok.apply_chat_template(m, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        seqs.append(list(ids)[: args.max_seq_len])
    order = list(range(len(seqs)))
    random.Random(args.seed).shuffle(order)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    times, tokens = [], []
    for s in range(0, len(order), args.batch_size):
        batch = [seqs[i] for i in order[s : s + args.batch_size]]
        n = max(len(b) for b in batch)
        ids = torch.tensor([b + [pad] * (n - len(b)) for b in batch])
        mask = torch.tensor([[1] * len(b) + [0] * (n - len(b)) for b in batch])
        labels = ids.clone()
        labels[mask == 0] = -100
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(sum(len(b) for b in batch))
    return {"step_s": times, "tokens": tokens, "wall_s": time.perf_counter() - start}


def run_baimo(args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            args.baimo, "finetune", "--model", args.gguf, "--data", args.data, "--out", out,
            "--epochs", "1", "--batch-size", str(args.batch_size), "--rank", str(args.rank),
            "--alpha", str(args.alpha), "--dropout", str(args.dropout), "--lr", str(args.lr),
            "--max-seq-len", str(args.max_seq_len), "--eval-fraction", "0", "--seed", str(args.seed),
            "--threads", str(args.threads), "--step-log", os.path.join(out, "steps.jsonl"),
        ]
        print("$", " ".join(cmd), file=sys.stderr)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        rows = [json.loads(l) for l in Path(out, "steps.jsonl").read_text().splitlines() if l.strip()]
    return {"step_s": [r["seconds"] for r in rows], "tokens": [r["sequence_tokens"] for r in rows],
            "wall_s": wall}


def summary(name: str, r: dict) -> dict:
    # The first step carries one-time costs on both sides (allocation, autograd graph set-up): left out.
    steps = r["step_s"][1:] or r["step_s"]
    toks = r["tokens"][1:] or r["tokens"]
    s = {
        "steps": len(r["step_s"]),
        "median_step_s": statistics.median(steps),
        "tokens_per_s": sum(toks) / sum(steps),
    }
    print(f"{name:>14}: {s['steps']} steps, median step {s['median_step_s']:.2f} s, "
          f"{s['tokens_per_s']:.1f} sequence tokens/s (first step excluded)")
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baimo", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--data", default="fixtures/finetune/train.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run both sides this many times, alternating (a neighbour's load then falls on both "
                         "sides alike); the summary pools every round's steps")
    ap.add_argument("--json", default=None, help="write both runs' raw step times here")
    args = ap.parse_args()
    convs = load_conversations(Path(args.data))
    rounds = []
    for i in range(args.rounds):
        ours = run_baimo(args)
        theirs = run_peft(args, convs)
        rounds.append({"baimo": ours, "peft": theirs})
        if args.rounds > 1:
            a, b = summary(f"round {i + 1} baimo", ours), summary(f"round {i + 1} PEFT", theirs)
            print(f"  round {i + 1} step time ratio: {a['median_step_s'] / b['median_step_s']:.2f}")

    def pooled(side):
        # `summary` leaves out the first step (one-time costs): keep one first step, then every round's others.
        first = rounds[0][side]
        return {"step_s": first["step_s"][:1] + [t for r in rounds for t in r[side]["step_s"][1:]],
                "tokens": first["tokens"][:1] + [t for r in rounds for t in r[side]["tokens"][1:]]}

    # The same conversations in both epochs, but not the same batches (each side shuffles with its own
    # generator), so the whole epoch's time is the like-for-like figure; the step medians are per batch.
    epochs = [sum(r["baimo"]["step_s"]) / sum(r["peft"]["step_s"]) for r in rounds]
    print(f"epoch time ratio baimo / PEFT, per round: {' '.join(f'{e:.2f}' for e in epochs)}; "
          f"median {statistics.median(epochs):.2f}")
    # Loading included: Baimo's whole process (start, load, data, epoch, adapter written) against PEFT's
    # loading and epoch.
    walls = [r["baimo"]["wall_s"] / r["peft"]["wall_s"] for r in rounds]
    print(f"load + epoch wall time ratio baimo / PEFT, per round: {' '.join(f'{w:.2f}' for w in walls)} "
          f"({' '.join('%.1f/%.1f s' % (r['baimo']['wall_s'], r['peft']['wall_s']) for r in rounds)}); "
          f"median {statistics.median(walls):.2f}")
    a, b = summary("baimo", pooled("baimo")), summary("PyTorch + PEFT", pooled("peft"))
    print(f"step time ratio baimo / PEFT: {a['median_step_s'] / b['median_step_s']:.2f} "
          f"(target <= 1.0, goal 0.7); tokens/s ratio {a['tokens_per_s'] / b['tokens_per_s']:.2f}"
          + (f" ({args.rounds} alternating rounds pooled)" if args.rounds > 1 else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
