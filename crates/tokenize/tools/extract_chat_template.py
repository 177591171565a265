#!/usr/bin/env python3
"""Print the `tokenizer.chat_template` string of a GGUF file (metadata only, stdlib only).

Regenerates the fixtures in crates/tokenize/tests/fixtures:
    python3 crates/tokenize/tools/extract_chat_template.py qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        > crates/tokenize/tests/fixtures/qwen2.5-coder-instruct.jinja
    python3 crates/tokenize/tools/extract_chat_template.py smollm2-135m-instruct-q4_1.gguf \
        > crates/tokenize/tests/fixtures/smollm2-instruct.jinja
(the template text is written byte for byte, no trailing newline added).
"""
import struct
import sys

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_value(f, ty):
    if ty in SCALARS:
        fmt = SCALARS[ty]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if ty == 8:
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n).decode("utf-8")
    if ty == 9:
        ety, n = struct.unpack("<IQ", f.read(12))
        return [read_value(f, ety) for _ in range(n)]
    raise ValueError(f"bad GGUF value type {ty}")


def main(path, key="tokenizer.chat_template"):
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF", "not a GGUF file"
        _version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        for _ in range(n_kv):
            (n,) = struct.unpack("<Q", f.read(8))
            k = f.read(n).decode("utf-8")
            (ty,) = struct.unpack("<I", f.read(4))
            v = read_value(f, ty)
            if k == key:
                sys.stdout.write(v)
                return
    sys.exit(f"{key} not found in {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
