#!/usr/bin/env python3
"""Bounded load test for `baimo serve` (or any OpenAI-compatible server): N streaming chat requests at
concurrency C. Reports aggregate completion tokens/s and p50/p99 time to first token; exits non-zero if any
request fails. Standard library only.

    tools/load_test.py --base-url http://127.0.0.1:8080/v1 --model NAME            # a running server
    tools/load_test.py --serve fixtures/tiny/qwen2-q/qwen2-q-Q4_K_M.gguf            # starts target/debug/baimo

Defaults: 64 requests, concurrency 16, 64 tokens each, seeded sampling (temperature 0.7, seed = request index).
"""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

TOPICS = ["tea", "rivers", "compilers", "bridges", "pandas", "trains", "rice", "silk", "kites", "paper",
          "ink", "bamboo", "clocks", "maps", "bells", "lanterns"]


def one_request(url, model, key, i, max_tokens, timeout):
    """(ttft seconds, completion tokens) of one streamed chat completion; raises on any failure."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.7, "seed": i,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": f"Request {i}: write a few sentences about {TOPICS[i % len(TOPICS)]}."}]}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.perf_counter()
    try:
        conn.request("POST", u.path.rstrip("/") + "/chat/completions", json.dumps(body), headers)
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}: {r.read()[:300]!r}")
        first, usage, done = None, None, False
        while True:
            line = r.readline()
            if not line:
                break
            line = line.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"error in stream: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if first is None and (c.get("delta", {}).get("content") or c.get("finish_reason")):
                    first = time.perf_counter() - t0
        if not done or usage is None:
            raise RuntimeError("stream ended without usage and [DONE]")
        return (first if first is not None else time.perf_counter() - t0), usage
    finally:
        conn.close()


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def run(url, model, key, n, c, max_tokens, timeout):
    ttft, toks, errs = [], [], []
    lock = threading.Lock()
    todo = iter(range(n))

    def worker():
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                t, k = one_request(url, model, key, i, max_tokens, timeout)
                with lock:
                    ttft.append(t)
                    toks.append(k)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    errs.append(f"request {i}: {e}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = sum(toks)
    print(f"requests {n}, concurrency {c}, max_tokens {max_tokens}: {len(toks)} ok, {len(errs)} failed in {wall:.2f}s")
    print(f"aggregate {total / wall:.1f} tokens/s ({total} completion tokens)")
    print(f"time to first token: p50 {percentile(ttft, 0.5) * 1000:.0f} ms, p99 {percentile(ttft, 0.99) * 1000:.0f} ms")
    for e in errs[:10]:
        print("  " + e, file=sys.stderr)
    return 1 if errs else 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default="model")
    ap.add_argument("--api-key", default=os.environ.get("BAIMO_API_KEY"))
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=600, help="per request, seconds")
    ap.add_argument("--serve", metavar="MODEL_PATH", help="start `baimo serve` on this model for the run")
    ap.add_argument("--bin", default=str(Path(__file__).resolve().parents[1] / "target" / "debug" / "baimo"))
    a = ap.parse_args()
    if not a.serve and not a.base_url:
        ap.error("give --base-url or --serve")
    proc = None
    if a.serve:
        port = free_port()
        proc = subprocess.Popen([a.bin, "serve", "--model", f"{a.model}={a.serve}", "--port", str(port)])
        a.base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                print("baimo serve did not come up", file=sys.stderr)
                return 1
            time.sleep(0.2)
    try:
        return run(a.base_url, a.model, a.api_key, a.requests, a.concurrency, a.max_tokens, a.timeout)
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
