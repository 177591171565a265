#!/usr/bin/env python3
"""Generate Baimo's tiny reference models and their reference logits.

Everything is deterministic from --seed; nothing is downloaded.

For every model in MODELS this script
  1. builds a small byte-level BPE tokenizer (trained with the `tokenizers`
     library on a short English + Chinese text embedded below),
  2. builds a transformers model with a real architecture (LlamaForCausalLM,
     Qwen2ForCausalLM, Qwen3ForCausalLM) and fills ALL weights (norms and
     biases included) from a seeded torch generator,
  3. writes the Hugging Face folder (config.json, model.safetensors in F32,
     tokenizer.json, tokenizer_config.json with a chat template,
     generation_config.json),
  4. converts it with llama.cpp's own convert_hf_to_gguf.py (F32 and F16),
  5. quantizes the F32 GGUF with llama.cpp's llama_model_quantize (through
     llama-cpp-python) to the requested types, and reads back every GGUF's
     tensor types with gguf-py,
  6. computes reference logits for all positions of three fixed prompts with
     transformers (float32, eager attention) and with llama.cpp
     (llama-cpp-python, logits_all) for every GGUF,
  7. writes fixtures/tiny/manifest.json (format: fixtures/README.md).

The converter recognises BPE pre-tokenizers by hashing the token ids of a test
string; a freshly trained vocabulary has no known hash, so the converter runs
with get_vocab_base_pre() answering the pre-tokenizer whose regex the tokenizer
uses ("qwen2" or "llama-bpe"). Nothing else in the converter is changed.

Usage:
  PY=~/.cache/baimo-peers/venv/bin/python
  $PY tools/make_tiny_models.py --out fixtures/tiny \
      --llama-cpp-src ~/.cache/baimo-peers/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SEED = 20261128

# --------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Training text for the BPE merges (written for this project).
CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model is easy to test:
every weight is random, but the shapes are real. When the logits of two
programs agree to the last few digits, the bug is somewhere else. Please write
a short email to the team about the meeting on Monday. Summarize the following
text in one sentence. Translate the sentence into Chinese. def add(a, b):
    return a + b
for i in range(10):
    print(i * i)
The user asked a question and the assistant gave an answer. Hello, world!
It is a truth universally acknowledged that tests which are never run never fail.
你好，世界！请用一句话总结下面的文字。请把这句话翻译成英文。我们明天上午十点开会，
请准时参加。大模型的推理需要很多内存和计算。这个函数返回两个数的和。今天天气很好。
用户提出了一个问题，助手给出了回答。谢谢！
"""


def _bytelevel_pre(regex: str):
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])


def train_bpe(regex: str, n_merges_vocab: int):
    """Byte-level BPE: 256 byte tokens + merges, trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, processors
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = _bytelevel_pre(regex)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=n_merges_vocab, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return tok


QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

TOKENIZER_STYLES = {
    # Qwen2-style: Qwen2 regex, no BOS, ChatML specials.
    "qwen": dict(regex=QWEN2_REGEX, pre="qwen2", target=320,
                 specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                 bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
                 gen_eos=["<|im_end|>", "<|endoftext|>"], template=QWEN_CHAT_TEMPLATE,
                 tokenizer_class="Qwen2Tokenizer"),
    # Llama-3-style: Llama 3 regex (digits in groups of 3), BOS added, Llama 3 header specials.
    "llama3": dict(regex=LLAMA3_REGEX, pre="llama-bpe", target=320,
                   specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                             "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"],
                   bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, add_bos=True,
                   gen_eos=["<|end_of_text|>", "<|eot_id|>"], template=LLAMA3_CHAT_TEMPLATE,
                   tokenizer_class="PreTrainedTokenizerFast"),
}


def build_tokenizer(style: str) -> tuple[dict, dict, dict]:
    """Return (tokenizer.json dict, tokenizer_config.json dict, {token: id} of specials)."""
    s = TOKENIZER_STYLES[style]
    n_bpe = s["target"] - len(s["specials"])
    tok = train_bpe(s["regex"], n_bpe)
    tj = json.loads(tok.to_str())
    vocab = tj["model"]["vocab"]
    assert len(vocab) <= n_bpe, len(vocab)
    base = len(vocab)
    special_ids = {c: base + i for i, c in enumerate(s["specials"])}
    tj["added_tokens"] = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True} for c, i in special_ids.items()]
    if s["bos"]:
        bos = s["bos"]
        tj["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [special_ids[bos]], "tokens": [bos]}}}]}
    cfg = {
        "add_bos_token": s["add_bos"],
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True} for c, i in special_ids.items()},
        "bos_token": s["bos"],
        "eos_token": s["eos"],
        "pad_token": s["pad"],
        "unk_token": None,
        "chat_template": s["template"],
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 4096,
        "split_special_tokens": False,
        "tokenizer_class": s["tokenizer_class"],
    }
    return tj, cfg, special_ids


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

def _common(hidden, inter, layers, heads, kv, tie, theta, eps=1e-5, max_pos=4096):
    return {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "tie_word_embeddings": tie,
            "rope_theta": theta, "rms_norm_eps": eps, "max_position_embeddings": max_pos,
            "hidden_act": "silu", "initializer_range": 0.02, "attention_dropout": 0.0,
            "use_cache": True, "torch_dtype": "float32"}


ALL_QUANTS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"]
# dropped by --no-optional-quants (about 2.9 MB of the committed fixtures)
OPTIONAL_QUANTS = {"Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K"}

MODELS = [
    dict(name="llama-gqa", arch="llama", tok="llama3", gguf=["F32", "F16"], quants=[],
         config={"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                 **_common(64, 128, 2, 4, 2, False, 10000.0),
                 "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1, "rope_scaling": None}),
    dict(name="llama-mha-rope3", arch="llama", tok="llama3", gguf=["F32", "F16"], quants=[],
         config={"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                 **_common(64, 128, 2, 4, 4, True, 500000.0),
                 "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
                 "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    dict(name="qwen2-gqa", arch="qwen2", tok="qwen", gguf=["F32", "F16"], quants=[],
         config={"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                 **_common(64, 128, 2, 4, 2, True, 1000000.0, eps=1e-6),
                 "max_window_layers": 2, "sliding_window": None, "use_sliding_window": False}),
    dict(name="qwen3-gqa", arch="qwen3", tok="qwen", gguf=["F32", "F16"], quants=[],
         config={"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                 **_common(64, 128, 2, 4, 2, False, 1000000.0, eps=1e-6),
                 "head_dim": 32, "attention_bias": False,
                 "max_window_layers": 2, "sliding_window": None, "use_sliding_window": False}),
    # Quantization models: every row length a multiple of 256 (K-quant super-blocks).
    dict(name="llama-q", arch="llama", tok="llama3", gguf=["F32"], quants=ALL_QUANTS, commit_f32=False,
         config={"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                 **_common(256, 512, 1, 4, 2, False, 10000.0),
                 "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1, "rope_scaling": None}),
    dict(name="qwen2-q", arch="qwen2", tok="qwen", gguf=["F32"], quants=["Q4_K_M"],
         commit_f32=False,
         config={"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                 **_common(256, 512, 1, 4, 2, True, 1000000.0, eps=1e-6),
                 "max_window_layers": 1, "sliding_window": None, "use_sliding_window": False}),
]

# llama_ftype values (llama.h). "Q4_K" etc. without suffix = that type for every
# tensor (quantize param `pure`), the _M/_S names are llama.cpp's mixes.
FTYPE = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K": 12, "Q4_K": 15,
         "Q5_K": 17, "Q6_K": 18, "Q4_K_M": 15, "Q4_K_S": 14, "Q3_K_M": 12, "Q5_K_M": 17}
PURE = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}

# Three fixed prompts (ids below 256, so valid for every tokenizer here): lengths 1, 7, 20.
PROMPTS = [
    [72],
    [35, 101, 108, 108, 111, 44, 32],
    [84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111, 119, 110, 32, 102, 111, 120, 46],
]


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def init_weights(model, hidden: int, n_layers: int, seed: int):
    """Fill every parameter from a seeded generator, in sorted-name order.

    embeddings / lm_head ~ N(0, (2/sqrt(hidden))^2): logits get a std of about 2;
    projections [out, in] ~ N(0, 1/in); o_proj and down_proj additionally / sqrt(2 n_layers);
    biases ~ N(0, 0.1^2); every RMSNorm weight (q_norm/k_norm included) ~ 1 + N(0, 0.2^2).
    """
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                p.copy_((2.0 / hidden ** 0.5) * torch.randn(p.shape, generator=g))
            else:
                std = 1.0 / p.shape[1] ** 0.5
                if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                    std /= (2 * n_layers) ** 0.5
                p.copy_(std * torch.randn(p.shape, generator=g))


def make_hf(spec: dict, out_dir: Path, seed: int) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    tj, tcfg, special_ids = build_tokenizer(spec["tok"])
    s = TOKENIZER_STYLES[spec["tok"]]
    vocab = len(tj["model"]["vocab"]) + len(special_ids)
    cfg = dict(spec["config"])
    cfg["vocab_size"] = vocab
    cfg["bos_token_id"] = special_ids[s["bos"]] if s["bos"] else None
    cfg["eos_token_id"] = special_ids[s["eos"]]
    if spec["arch"] != "llama":
        cfg.pop("bos_token_id")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    hf_cfg = AutoConfig.from_pretrained(str(out_dir))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32, attn_implementation="eager")
    init_weights(model, cfg["hidden_size"], cfg["num_hidden_layers"], seed)
    if cfg["tie_word_embeddings"]:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tensors = {}
    for k, v in model.state_dict().items():
        if cfg["tie_word_embeddings"] and k == "lm_head.weight":
            continue  # tied checkpoints do not store lm_head
        if "rotary_emb" in k:
            continue
        tensors[k] = v.detach().to(torch.float32).contiguous().clone()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    (out_dir / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tcfg, ensure_ascii=False, indent=2) + "\n",
                                                   encoding="utf-8")
    gen = {"do_sample": False, "eos_token_id": [special_ids[t] for t in s["gen_eos"]]}
    if s["bos"]:
        gen["bos_token_id"] = special_ids[s["bos"]]
    if s["pad"]:
        gen["pad_token_id"] = special_ids[s["pad"]]
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return {"vocab": vocab, "special_ids": special_ids, "n_params": sum(t.numel() for t in tensors.values())}


def check_hf_model(spec: dict, hf_dir: Path):
    """Checks that transformers read the config as intended (rope scaling, head_dim, biases)."""
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, attn_implementation="eager")
    c = spec["config"]
    hd = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
    inv = m.model.rotary_emb.inv_freq.double()
    plain = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    changed = int((~torch.isclose(inv, plain, rtol=1e-5)).sum())
    if c.get("rope_scaling"):
        assert changed > 0, "llama3 rope scaling did not change any frequency"
    else:
        assert changed == 0
    attn = m.model.layers[0].self_attn
    assert attn.q_proj.weight.shape[0] == c["num_attention_heads"] * hd
    if spec["arch"] == "qwen2":
        assert attn.q_proj.bias is not None and float(attn.q_proj.bias.abs().sum()) > 0
    if spec["arch"] == "qwen3":
        assert float((attn.q_norm.weight - 1).abs().sum()) > 0
    return {"rope_freqs_changed_by_scaling": changed, "head_dim": hd}


# --------------------------------------------------------------------------
# llama.cpp conversion / quantization
# --------------------------------------------------------------------------

CONVERT_WRAPPER = r"""
import sys
src, pre = sys.argv[1], sys.argv[2]
sys.path.insert(0, src + "/gguf-py")
sys.path.insert(0, src)
import conversion.base as base
# A freshly trained vocabulary has no entry in the converter's hash table of
# pre-tokenizers; answer the one whose regex this tokenizer uses.
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[3:]
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""

QUANT_WRAPPER = r"""
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.nthread = 2; p.pure = sys.argv[4] == "1"
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


def convert(llama_src: Path, hf_dir: Path, outfile: Path, outtype: str, pre: str, name: str, logdir: Path):
    cmd = [sys.executable, "-c", CONVERT_WRAPPER, str(llama_src), pre, str(hf_dir),
           "--outfile", str(outfile), "--outtype", outtype.lower(), "--model-name", name]
    r = subprocess.run(cmd, capture_output=True, text=True)
    (logdir / f"{outfile.stem}.convert.log").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit(f"convert failed for {outfile}")


def quantize(src: Path, dst: Path, qtype: str, logdir: Path):
    with open(logdir / f"{dst.stem}.quantize.log", "w") as lf:
        rc = subprocess.run([sys.executable, "-c", QUANT_WRAPPER, str(src), str(dst), str(FTYPE[qtype]),
                             "1" if qtype in PURE else "0"], stdout=lf, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"quantize {qtype} failed ({rc})")


def tensor_types(path: Path) -> dict:
    from gguf import GGUFReader
    r = GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def gguf_meta(path: Path) -> dict:
    from gguf import GGUFReader
    r = GGUFReader(str(path))
    out = {}
    for k, f in r.fields.items():
        if k.startswith("tokenizer.ggml.") and k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                       "tokenizer.ggml.token_type"):
            continue
        if k.startswith("GGUF."):
            continue
        try:
            v = f.contents()
        except Exception:
            continue
        if isinstance(v, (list, str, int, float, bool)) or v is None:
            out[k] = v
    return out


# --------------------------------------------------------------------------
# Reference logits
# --------------------------------------------------------------------------

def hf_logits(hf_dir: Path) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    m = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    res = []
    with torch.no_grad():
        for ids in PROMPTS:
            out = m(torch.tensor([ids], dtype=torch.long), use_cache=False)
            res.append(out.logits[0].float().numpy().astype("<f4"))
    return res


LLAMACPP_OPTS = dict(n_ctx=64, n_batch=64, n_ubatch=64, n_threads=2, n_threads_batch=2, logits_all=True,
                     type_k=0, type_v=0, flash_attn=False, seed=0, verbose=False)  # type 0 = GGML_TYPE_F32
# plus llama_model_params.use_extra_bufts = false (no AMX / weight repacking), see disable_extra_buffer_types


def llamacpp_logits(path: Path) -> list[np.ndarray]:
    """Runs in a child process: llama.cpp (OpenMP build) in the same process as torch dies with
    SIGILL here, so llama_cpp is never imported where torch is."""
    import tempfile
    with tempfile.TemporaryDirectory() as td:
        dst = Path(td) / "logits.npz"
        subprocess.run([sys.executable, os.path.abspath(__file__), "--llamacpp-logits-child", str(path), str(dst)],
                       check=True)
        z = np.load(dst)
        return [z[f"p{j}"] for j in range(len(PROMPTS))]


def disable_extra_buffer_types():
    """llama_model_params.use_extra_bufts = false for every Llama() (llama-cli's --no-repack).

    The extra CPU buffer types are AMX and the weight-repacking kernels. On this machine the CPU
    reports AMX, llama.cpp is built with -march=native, and the AMX kernels die with SIGILL
    (tilezero without kernel permission), so they stay off; it also keeps the results the same on
    machines with and without AMX/repack support."""
    import llama_cpp
    import llama_cpp.llama as llama_mod
    if getattr(llama_cpp, "_baimo_patched", False):
        return
    orig = llama_cpp.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p
    llama_cpp.llama_model_default_params = params
    llama_mod.llama_cpp.llama_model_default_params = params
    llama_cpp._baimo_patched = True


def _llamacpp_logits_child(path: Path) -> list[np.ndarray]:
    disable_extra_buffer_types()
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), **LLAMACPP_OPTS)
    n_vocab = llm.n_vocab()
    res = []
    for ids in PROMPTS:
        llm.reset()
        llm.eval(ids)
        res.append(np.array(llm.scores[: len(ids), :n_vocab], dtype="<f4"))
    del llm
    return res


def write_f32(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(arr, dtype="<f4").tofile(path)


# --------------------------------------------------------------------------

TOKENIZE_TEXTS = [
    "Hello, world!",
    " The quick brown fox jumps over the lazy dog.  12345 3.14",
    "def add(a, b):\n    return a + b\n",
    "你好，世界！请用一句话总结。",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "\t tabs  and   spaces\n\n\nnewlines 🦙",
]


def tokenize_refs(hf_dir: Path, gguf: Path) -> list[dict]:
    """Token ids of TOKENIZE_TEXTS from the HF tokenizer.json (tokenizers, specials parsed, nothing
    added) and from llama.cpp on the GGUF (llama_tokenize add_special=False, parse_special=True)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    import tempfile
    with tempfile.TemporaryDirectory() as td:
        dst = Path(td) / "tok.json"
        subprocess.run([sys.executable, os.path.abspath(__file__), "--llamacpp-tokenize-child", str(gguf), str(dst)],
                       check=True)
        lc = json.loads(dst.read_text())
    out = []
    for text, ids in zip(TOKENIZE_TEXTS, lc):
        hf_ids = tok.encode(text, add_special_tokens=False).ids
        out.append({"text": text, "hf_ids": hf_ids, "llamacpp_ids": ids, "same": hf_ids == ids})
    return out


def _llamacpp_tokenize_child(gguf: Path) -> list[list[int]]:
    disable_extra_buffer_types()
    from llama_cpp import Llama
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in TOKENIZE_TEXTS]


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--llamacpp-tokenize-child":
        Path(sys.argv[3]).write_text(json.dumps(_llamacpp_tokenize_child(Path(sys.argv[2]))))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--llamacpp-logits-child":
        res = _llamacpp_logits_child(Path(sys.argv[2]))
        np.savez(sys.argv[3], **{f"p{j}": a for j, a in enumerate(res)})
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="fixtures/tiny")
    ap.add_argument("--work", default="target/fixture-work",
                    help="where uncommitted intermediates go (F32 GGUF of the quant models, logs)")
    ap.add_argument("--llama-cpp-src", default=os.environ.get("LLAMA_CPP_SRC"))
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--only", default="")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--no-optional-quants", action="store_true",
                    help="quantize llama-q only to Q8_0, Q4_0, Q4_K, Q6_K, Q4_K_M (smaller fixtures)")
    args = ap.parse_args()

    out = Path(args.out)
    work = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    llama_src = Path(args.llama_cpp_src).expanduser() if args.llama_cpp_src else None
    if llama_src and not (llama_src / "convert_hf_to_gguf.py").exists():
        llama_src = llama_src / "vendor" / "llama.cpp"
    fixtures_root = out.parent  # manifest paths are relative to fixtures/

    def rel(p: Path) -> str:
        return os.path.relpath(p, fixtures_root)

    mpath = out / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {}
    old = {m["name"]: m for m in manifest.get("models", [])}
    only = [s for s in args.only.split(",") if s]
    summary = []
    entries = []
    for i, spec in enumerate(MODELS):
        name = spec["name"]
        if only and name not in only:
            if name in old:
                entries.append(old[name])
            continue
        seed = args.seed + i
        mdir = out / name
        if mdir.exists():
            shutil.rmtree(mdir)
        commit_base = spec.get("commit_f32", True)  # False: HF folder and F32 GGUF stay in --work
        hf_dir = (mdir if commit_base else work / name) / "hf"
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        log(f"== {name}: HF model (seed {seed})")
        info = make_hf(spec, hf_dir, seed)
        checks = check_hf_model(spec, hf_dir)
        entry = {"name": name, "arch": spec["arch"], "hf_dir": rel(hf_dir) if commit_base else None,
                 "vocab": info["vocab"],
                 "seed": seed, "n_params": info["n_params"], "tokenizer_style": spec["tok"],
                 "tokenizer_pre": TOKENIZER_STYLES[spec["tok"]]["pre"], "special_ids": info["special_ids"],
                 "config": json.loads((hf_dir / "config.json").read_text()), "checks": checks,
                 "prompts": PROMPTS, "gguf": {}, "tensor_types": {}, "hf_logits": [], "llamacpp_logits": {},
                 "max_abs_err_vs_hf": {}}
        hf = hf_logits(hf_dir)
        for j, a in enumerate(hf):
            p = mdir / "logits" / f"hf-p{j}.f32"
            write_f32(p, a)
            entry["hf_logits"].append(rel(p))
        entry["hf_logit_std"] = float(np.std(hf[2]))
        if not args.skip_llamacpp:
            if llama_src is None:
                raise SystemExit("--llama-cpp-src (or LLAMA_CPP_SRC) is needed for the GGUF files")
            ggufs = {}
            for t in spec["gguf"]:
                commit = t != "F32" or commit_base
                dst = (mdir if commit else work / name) / f"{name}-{t}.gguf"
                dst.parent.mkdir(parents=True, exist_ok=True)
                log(f"   convert {t} -> {dst}")
                convert(llama_src, hf_dir, dst, t, TOKENIZER_STYLES[spec["tok"]]["pre"],
                        f"baimo-tiny-{name}", work)
                ggufs[t] = (dst, commit)
            base_f32 = ggufs["F32"][0]
            for q in spec["quants"]:
                if args.no_optional_quants and q in OPTIONAL_QUANTS:
                    continue
                dst = mdir / f"{name}-{q}.gguf"
                log(f"   quantize {q}{' (pure)' if q in PURE else ''} -> {dst}")
                quantize(base_f32, dst, q, work)
                ggufs[q] = (dst, True)
            entry["gguf_metadata"] = gguf_meta(base_f32)
            entry["tokenize"] = tokenize_refs(hf_dir, base_f32)
            bad = [t["text"] for t in entry["tokenize"] if not t["same"]]
            if bad:
                log("   WARNING: HF and llama.cpp tokenize differently:", bad)
            for t, (path, commit) in ggufs.items():
                entry["gguf"][t] = rel(path) if commit else None
                tt = tensor_types(path)
                entry["tensor_types"][t] = tt
                lg = llamacpp_logits(path)
                entry["llamacpp_logits"][t] = []
                errs = []
                for j, a in enumerate(lg):
                    p = mdir / "logits" / f"llamacpp-{t}-p{j}.f32"
                    write_f32(p, a)
                    entry["llamacpp_logits"][t].append(rel(p))
                    errs.append(float(np.max(np.abs(a - hf[j]))))
                entry["max_abs_err_vs_hf"][t] = max(errs)
                counts = {}
                for v in tt.values():
                    counts[v] = counts.get(v, 0) + 1
                summary.append((name, t, max(errs), counts, path.stat().st_size))
            # the uncommitted F32 of quant models: drop it from "gguf" paths but keep its logits
            entry["gguf"] = {k: v for k, v in entry["gguf"].items() if v is not None}
        entries.append(entry)
        manifest = {"format": 1, "generator": "tools/make_tiny_models.py", "seed": args.seed,
                    "llamacpp_options": {**{k: v for k, v in LLAMACPP_OPTS.items() if k != "verbose"},
                                         "use_extra_bufts": False},
                    "logits_format": "raw little-endian float32, shape [len(prompt), vocab], row-major",
                    "models": entries}
        mpath.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log("wrote", mpath)
    print()
    print(f"{'model':18} {'type':7} {'max|llama.cpp-HF|':>18} {'bytes':>9}  tensor types")
    for name, t, err, counts, size in summary:
        print(f"{name:18} {t:7} {err:18.3e} {size:9d}  {counts}")


if __name__ == "__main__":
    main()
