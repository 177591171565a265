#!/usr/bin/env python3
"""Print the agreement table of fixtures/tiny (needs only numpy).

For every model and GGUF type: max and mean |llama.cpp - HF| over all positions of all prompts,
the fraction of positions where both pick the same argmax, and for quantized types the same
against llama.cpp on the unquantized F32 file.

  python3 tools/fixture_summary.py [--fixtures fixtures]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def load(root: Path, rel: str, n: int, vocab: int) -> np.ndarray:
    a = np.fromfile(root / rel, dtype="<f4")
    assert a.size == n * vocab, (rel, a.size, n, vocab)
    return a.reshape(n, vocab)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="fixtures")
    args = ap.parse_args()
    root = Path(args.fixtures)
    man = json.loads((root / "tiny" / "manifest.json").read_text())
    print(f"{'model':16} {'type':7} {'max|d| vs HF':>12} {'mean|d|':>9} {'argmax=':>7} "
          f"{'max|d| vs F32':>13} {'committed':>9}")
    for m in man["models"]:
        v = m["vocab"]
        hf = [load(root, p, len(ids), v) for p, ids in zip(m["hf_logits"], m["prompts"])]
        ref32 = None
        if "F32" in m["llamacpp_logits"]:
            ref32 = [load(root, p, len(ids), v) for p, ids in zip(m["llamacpp_logits"]["F32"], m["prompts"])]
        for t, paths in m["llamacpp_logits"].items():
            lc = [load(root, p, len(ids), v) for p, ids in zip(paths, m["prompts"])]
            d = np.concatenate([np.abs(a - b).ravel() for a, b in zip(lc, hf)])
            same = np.mean(np.concatenate([a.argmax(1) == b.argmax(1) for a, b in zip(lc, hf)]))
            d32 = ""
            if ref32 is not None and t != "F32":
                d32 = f"{max(float(np.abs(a - b).max()) for a, b in zip(lc, ref32)):.3e}"
            print(f"{m['name']:16} {t:7} {d.max():12.3e} {d.mean():9.2e} {same:7.2f} {d32:>13} "
                  f"{'yes' if t in m['gguf'] else 'no':>9}")


if __name__ == "__main__":
    main()
