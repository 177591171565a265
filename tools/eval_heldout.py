#!/usr/bin/env python3
"""Greedy answers of a model with and without a LoRA adapter to the held-out paraphrased questions of
fixtures/finetune/heldout.jsonl (tools/make_company_data.py); counts answers containing the fact's key phrase.

Usage: eval_heldout.py BAIMO_BIN MODEL ADAPTER_DIR [--data fixtures/finetune/heldout.jsonl]
"""
import argparse
import json
import subprocess

ap = argparse.ArgumentParser()
ap.add_argument("bin"); ap.add_argument("model"); ap.add_argument("adapter")
ap.add_argument("--data", default="fixtures/finetune/heldout.jsonl")
a = ap.parse_args()
score = [0, 0]
n = 0
for line in open(a.data):
    r = json.loads(line)
    system, q, key = r["messages"][0]["content"], r["messages"][1]["content"], r["key"]
    outs = []
    for extra in ([], ["--adapter", a.adapter]):
        o = subprocess.run([a.bin, "run", a.model, "--system", system, "-p", q, "-n", "40", "--temperature", "0",
                            "--json", *extra], capture_output=True, text=True, timeout=120, check=True)
        outs.append(json.loads(o.stdout)["text"].strip().replace("\n", " "))
    hits = [key in o for o in outs]
    score = [s + h for s, h in zip(score, hits)]
    n += 1
    print(f"{q[:48]:48} [{key}] base={'Y' if hits[0] else 'n'} tuned={'Y' if hits[1] else 'n'} | {outs[1][:80]}")
print(f"held-out facts right: base {score[0]}/{n}, fine-tuned {score[1]}/{n}")
