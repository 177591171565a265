#!/usr/bin/env python3
"""Writes the tiny fuzz seed files under fuzz/seeds/ (each well under 5 KB).

Encodes the formats independently of the Rust code, following the GGUF spec
(ggml/docs/gguf.md), the safetensors spec and llama2.c's run.c. Regenerate with:
    python3 fuzz/make_seeds.py
"""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_val(t, v):
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    if t == 8:
        return gguf_str(v)
    if t == 9:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(gguf_val(et, i) for i in items)
    return struct.pack(fmt[t], v)


def gguf(version, kvs, tensors, align=32):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gguf_str(k) + struct.pack("<I", t) + gguf_val(t, v)
    offset, blobs = 0, []
    for name, dims, ty, data in tensors:
        out += gguf_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, offset)
        pad = -len(data) % align
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    out += b"\0" * (-len(out) % align)
    return out + b"".join(blobs)


def write(sub, name, data):
    os.makedirs(os.path.join(ROOT, sub), exist_ok=True)
    with open(os.path.join(ROOT, sub, name), "wb") as f:
        f.write(data)
    assert len(data) < 5000, (name, len(data))


kvs = [
    ("general.architecture", 8, "llama"),
    ("llama.block_count", 4, 2),
    ("llama.rope.freq_base", 6, 10000.0),
    ("flag", 7, True),
    ("big", 10, 1 << 40),
    ("neg", 11, -5),
    ("d", 12, 0.5),
    ("tokenizer.ggml.tokens", 9, (8, ["<s>", "a", "\u00e9"])),
    ("tokenizer.ggml.scores", 9, (6, [0.0, -1.0, -2.0])),
    ("nested", 9, (9, [(0, [1, 2]), (5, [-1])])),
]
f32 = struct.pack("<8f", *range(8))
tensors = [
    ("token_embd.weight", [4, 2], 0, f32),
    ("q4_0", [32], 2, bytes(range(18))),
    ("q4_k", [256], 12, bytes(144)),
    ("bf16", [3], 30, bytes(6)),
]
write("gguf", "llama_v3.gguf", gguf(3, kvs, tensors))
write("gguf", "v2_align64.gguf", gguf(2, [("general.alignment", 4, 64)] + kvs[:2], tensors[:2], align=64))
write("gguf", "vocab_only.gguf", gguf(3, kvs[:1] + kvs[7:8], []))

def safetensors(tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

write("safetensors", "model.safetensors", safetensors([
    ("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
    ("h", "F16", [3], bytes(6)),
    ("b", "BF16", [1, 1], bytes(2)),
]))
write("safetensors", "index.json", json.dumps({"metadata": {"total_size": 4}, "weight_map": {
    "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}).encode())

def llama2c(dim, hidden, layers, heads, kv_heads, vocab, seq_len, shared):
    hs = dim // heads
    kv = kv_heads * hs
    n = (vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim) + dim
         + 2 * seq_len * (hs // 2) + (0 if shared else vocab * dim))
    head = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq_len)
    return head + struct.pack(f"<{n}f", *[i / 64 for i in range(n)])

write("llama2c", "shared.bin", llama2c(4, 6, 2, 2, 1, 5, 3, True))
write("llama2c", "unshared.bin", llama2c(4, 6, 1, 2, 2, 3, 2, False))
vocab = struct.pack("<i", 4)
for piece, score in [(b"<unk>", 0.0), (b"\n<s>\n", 0.0), (b" a", -1.0), (b"ab", -2.0)]:
    vocab += struct.pack("<fi", score, len(piece)) + piece
# The llama2c target reads a u16 vocab size first, then the tokenizer bytes.
write("llama2c", "tok4.bin", struct.pack("<H", 4) + vocab)
