#!/usr/bin/env python3
"""Time to first token of a chat turn whose ~1,000-token history the server has just seen (prefix cache warm)
against the same turn with a history it has never seen (cold). Any OpenAI-compatible server.

Usage: prefix_ttft.py BASE_URL MODEL [--history-words 700] [--reps 3]   (stdlib only)
"""
import argparse
import http.client
import json
import statistics
import time
import urllib.parse

WORDS = ("river bridge lantern paper silk tea bamboo clock map bell kite rice ink train panda compiler "
         "garden harbor mountain meadow").split()


def history(seed, n_words):
    text = " ".join(WORDS[(seed * 7 + i * 13) % len(WORDS)] for i in range(n_words))
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Conversation {seed}. Here are my notes: {text}"},
            {"role": "assistant", "content": "Thank you, I have read your notes."}]


def ttft(base, model, messages):
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "messages": messages, "stream": True, "max_tokens": 8, "temperature": 0})
    t0 = time.perf_counter()
    c.request("POST", u.path.rstrip("/") + "/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"status {r.status}: {r.read()[:200]}")
    first = None
    for line in r:
        line = line.decode().strip()
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            d = json.loads(line[5:])
            if d.get("choices") and d["choices"][0].get("delta", {}).get("content") and first is None:
                first = time.perf_counter() - t0
    c.close()
    return first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("model")
    ap.add_argument("--history-words", type=int, default=700)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    cold, warm = [], []
    for rep in range(a.reps):
        h = history(1000 + rep, a.history_words)
        turn1 = h + [{"role": "user", "content": "Summarize my notes in one sentence."}]
        cold.append(ttft(a.base, a.model, turn1))       # never seen: cold
        turn2 = h + [{"role": "user", "content": "Summarize my notes in one sentence."},
                     {"role": "assistant", "content": "They are a list of words."},
                     {"role": "user", "content": "Which word comes first?"}]
        warm.append(ttft(a.base, a.model, turn2))       # the next turn: history cached
    c, w = statistics.median(cold), statistics.median(warm)
    print(json.dumps({"cold_ttft_s": c, "warm_ttft_s": w, "ratio": w / c, "cold": cold, "warm": warm}))


if __name__ == "__main__":
    main()
