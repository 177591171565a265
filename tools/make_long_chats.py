#!/usr/bin/env python3
"""Long conversations for the training-speed benchmark at length (BENCHMARKS.md, "at length").

Writes N chats (OpenAI format) of one user turn and one assistant turn of WORDS words each, seeded
pseudo-text from a small business vocabulary: about 1,500 SmolLM2 tokens per chat at the defaults. Only the
length matters here; fixtures/finetune holds the data that tests what a model learns.

  python3 tools/make_long_chats.py --out /tmp/long.jsonl [--chats 8] [--words 700] [--seed 3]
"""
import argparse
import json
import random

WORDS = (
    "the company ships widgets gadgets sprockets to customers in many regions with warranty support "
    "pricing policy returns shipping delivery invoice account"
).split()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--chats", type=int, default=8)
    ap.add_argument("--words", type=int, default=700)
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    text = lambda: " ".join(rng.choice(WORDS) for _ in range(a.words))
    with open(a.out, "w", encoding="utf-8") as f:
        for _ in range(a.chats):
            u, r = text(), text()
            msgs = [{"role": "user", "content": u}, {"role": "assistant", "content": r}]
            f.write(json.dumps({"messages": msgs}) + "\n")


if __name__ == "__main__":
    main()
