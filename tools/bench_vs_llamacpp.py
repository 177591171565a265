#!/usr/bin/env python3
"""Baimo against llama.cpp on the same GGUF files, same machine, same run.

For each model and thread count, runs `baimo bench --json` and llama.cpp's `llama-bench -o json`
back to back (alternating which goes first), with the same tests:
  pp512 and tg128 at depth 0, and tg128 at depth 4096 (only for --depth-models),
plus llama.cpp's load-to-first-token time (llama-cpp-python, one token) and both peak RSS figures
(baimo reports its own VmHWM; llama-bench's comes from wait4() on the child). Prints markdown tables
of ours, llama.cpp's and the ratio, and optionally rewrites the results section of BENCHMARKS.md.

Run it with the peer venv's python (llama-cpp-python is needed for the load-time probe only):
  export CARGO_TARGET_DIR=/work/target-release && cargo build --release -p baimo
  ~/.cache/baimo-peers/venv/bin/python tools/bench_vs_llamacpp.py \\
      --membw-json /work/bench-models/membw.json --update BENCHMARKS.md --json /work/bench-models/bench.json
Subsets: --models Q4_0,qwen-coder  --threads 2  --reps 3  --no-depth  --dry-run
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HOME = Path.home()
PEERS = Path(os.environ.get("BAIMO_PEERS", HOME / ".cache/baimo-peers"))
SHAPED = ["F16", "Q8_0", "Q4_0", "Q4_K_M"]
REAL = {
    "qwen-coder": "/work/models-dl/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "smollm2": "/work/models-dl/smollm2-135m-instruct-q4_1.gguf",
}
MARK_BEGIN = "<!-- bench_vs_llamacpp:begin -->"
MARK_END = "<!-- bench_vs_llamacpp:end -->"


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def run_child(cmd, env=None, timeout=3600):
    """Runs cmd; returns (rc, stdout, stderr, peak RSS MiB of the child from wait4, seconds)."""
    t0 = time.time()
    with open(os.devnull, "rb") as devnull:
        p = subprocess.Popen(cmd, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return p.returncode, out, err, None, time.time() - t0


def run_with_rss(cmd, env=None):
    """Like run_child, but reaps with wait4 to get this child's own ru_maxrss (KiB on Linux)."""
    t0 = time.time()
    out_f = open(f"/tmp/bvl-{os.getpid()}.out", "w+")
    err_f = open(f"/tmp/bvl-{os.getpid()}.err", "w+")
    with open(os.devnull, "rb") as devnull:
        p = subprocess.Popen(cmd, stdin=devnull, stdout=out_f, stderr=err_f, env=env, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read(), err_f.read()
    out_f.close()
    err_f.close()
    return p.returncode, out, err, ru.ru_maxrss / 1024.0, time.time() - t0


def baimo_run(args, gguf, threads, p, n, depth, bw):
    cmd = [args.baimo, "bench", gguf, "-p", str(p), "-n", str(n), "-d", str(depth), "-t", str(threads),
           "-r", str(args.reps), "--json"]
    if bw:
        cmd += ["--mem-bw", f"{bw:.2f}"]
    if args.no_warmup:
        cmd.append("--no-warmup")
    log("$", " ".join(cmd))
    rc, out, err, _, wall = run_child(cmd)
    if rc != 0:
        log(f"baimo failed rc={rc}: {err.strip()[-500:]}")
        return None
    r = json.loads(out.strip().splitlines()[-1])
    r["wall_s"] = wall
    return r


def llama_run(args, gguf, threads, p, n, depth):
    cmd = [args.llama_bench, "-m", gguf, "-p", str(p), "-n", str(n), "-d", str(depth), "-t", str(threads),
           "-r", str(args.reps), "-o", "json", "--repack", "0"]
    if args.no_warmup:
        cmd.append("--no-warmup")
    env = dict(os.environ)
    bindir = str(Path(args.llama_bench).parent)
    env["LD_LIBRARY_PATH"] = bindir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    log("$", " ".join(cmd))
    rc, out, err, rss, wall = run_with_rss(cmd, env)
    if rc != 0:
        log(f"llama-bench failed rc={rc}: {err.strip()[-500:]}")
        return None
    tests = json.loads(out)
    res = {"peak_rss_mb": rss, "wall_s": wall, "tests": {}}
    for t in tests:
        kind = "pp" if t["n_prompt"] > 0 else "tg"
        nn = t["n_prompt"] if kind == "pp" else t["n_gen"]
        name = f"{kind}{nn}" + (f" @ d{t['n_depth']}" if t.get("n_depth") else "")
        res["tests"][name] = {"tokens_per_s": spread(t["samples_ts"]), "samples": t["samples_ts"],
                              "flash_attn": t.get("flash_attn"), "type_k": t.get("type_k")}
        res["build"] = {k: t.get(k) for k in ("build_commit", "build_number", "cpu_info", "model_type",
                                              "model_size", "model_n_params")}
    return res


LOAD_PROBE = r"""
import json, sys, time
import llama_cpp as L
L.llama_backend_init()
t0 = time.perf_counter()
mp = L.llama_model_default_params()
mp.use_extra_bufts = False
model = L.llama_model_load_from_file(sys.argv[1].encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx = 512
cp.n_threads = cp.n_threads_batch = int(sys.argv[2])
ctx = L.llama_init_from_model(model, cp)
tok = (L.llama_token * 1)(0)
assert L.llama_decode(ctx, L.llama_batch_get_one(tok, 1)) == 0
L.llama_synchronize(ctx)
print(json.dumps({"load_s": time.perf_counter() - t0}))
"""


def llama_load_time(gguf, threads):
    rc, out, err, rss, _ = run_with_rss([sys.executable, "-c", LOAD_PROBE, gguf, str(threads)])
    if rc != 0:
        log(f"llama.cpp load probe failed rc={rc}: {err.strip()[-300:]}")
        return None
    try:
        return json.loads(out.strip().splitlines()[-1])["load_s"]
    except (ValueError, IndexError):
        return None


def membw(args):
    if args.membw_json and Path(args.membw_json).exists():
        j = json.loads(Path(args.membw_json).read_text())
        return {r["threads"]: r["best_GBps"] for r in j["c"]}, j
    if args.measure_bw:
        out = args.membw_json or "/tmp/membw.json"
        cmd = [sys.executable, str(Path(args.shared) / "membw.py"), "--mib", "2048", "--reps", "10",
               "--build-dir", "/tmp/membw-build", "--json", out]
        log("$", " ".join(cmd))
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        j = json.loads(Path(out).read_text())
        return {r["threads"]: r["best_GBps"] for r in j["c"]}, j
    return {}, None


def models(args):
    out = []
    for key in args.models.split(","):
        key = key.strip()
        if key in SHAPED:
            out.append((f"qwen2-0.5b {key}", key, str(Path(args.models_dir) / "qwen2-0.5b" / f"qwen2-0.5b-{key}.gguf")))
        elif key in REAL:
            out.append((Path(REAL[key]).name.removesuffix(".gguf"), key, REAL[key]))
        else:
            raise SystemExit(f"unknown model {key!r}: one of {SHAPED + list(REAL)}")
    return out


def fmt(x, d=1):
    return "n/a" if x is None else f"{x:.{d}f}"


def med(t):
    return None if not t else t["median"]


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def tables(rows, args, bw) -> str:
    pp, tg = f"pp{args.n_prompt}", f"tg{args.n_gen}"
    tgd = f"tg{args.n_gen} @ d{args.depth}"
    L = []
    L.append("### Speed (tokens/s, median of {} reps; min–max in brackets)\n".format(args.reps))
    L.append("| model | threads | test | baimo | llama.cpp | baimo ÷ llama.cpp |")
    L.append("|---|--:|---|--:|--:|--:|")
    for r in rows:
        for name in (pp, tg, tgd):
            o = r["ours"].get(name)
            t = r["theirs"].get(name)
            if o is None and t is None:
                continue
            cell = lambda s: "n/a" if s is None else f"{s['median']:.2f} ({s['min']:.1f}–{s['max']:.1f})"
            L.append(f"| {r['label']} | {r['threads']} | {name} | {cell(o)} | {cell(t)} | "
                     f"{fmt(ratio(med(o), med(t)), 2)} |")
    L.append("")
    L.append("### Memory and load time\n")
    L.append("Budget = file size + baimo's KV cache for the run (f32, depth 0 run) + 150 MiB. "
             "Load = model load to the first token's logits (page cache warm).\n")
    L.append("| model | threads | file MiB | baimo KV MiB | budget MiB | baimo peak RSS MiB | within | "
             "llama.cpp peak RSS MiB | baimo load s | llama.cpp load s |")
    L.append("|---|--:|--:|--:|--:|--:|:-:|--:|--:|--:|")
    for r in rows:
        j = r.get("baimo_json") or {}
        fb = (j.get("file_bytes") or 0) / 2**20
        kv = (j.get("kv_bytes") or 0) / 2**20
        budget = fb + kv + 150
        rss = j.get("peak_rss_mb")
        ok = "n/a" if rss is None else ("yes" if rss <= budget else "no")
        L.append(f"| {r['label']} | {r['threads']} | {fb:.0f} | {kv:.1f} | {budget:.0f} | {fmt(rss, 0)} | {ok} | "
                 f"{fmt(r.get('llama_rss'), 0)} | {fmt(j.get('load_s'), 2)} | {fmt(r.get('llama_load_s'), 2)} |")
    L.append("")
    L.append(f"### Decode ({tg}) against its two limits\n")
    L.append("Bandwidth limit = measured read bandwidth ÷ bytes read per token (all weights, one embedding row "
             "when untied, + f32 KV at mean depth). Arithmetic limit = threads × 2 FMA × f32 lanes (16 with AVX-512, else 8) × 2 flops × "
             "clock ÷ flops per token (2 per weight + attention).\n")
    L.append("| model | threads | MiB/token | GB/s | bandwidth limit tok/s | baimo % | llama.cpp % | "
             "GFLOP/token | arithmetic limit tok/s | baimo % |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        j = r.get("baimo_json") or {}
        lim = j.get("decode_limits") or {}
        if not lim:
            continue
        bwl = lim.get("bandwidth_limit_tokens_per_s")
        t = med(r["theirs"].get(tg))
        pct = lambda x, l: "n/a" if x is None or not l else f"{100 * x / l:.0f}%"
        L.append(f"| {r['label']} | {r['threads']} | {lim['bytes_per_token'] / 2**20:.1f} | "
                 f"{fmt(lim.get('mem_bw_gbs'), 1)} | {fmt(bwl, 1)} | {pct(med(r['ours'].get(tg)), bwl)} | "
                 f"{pct(t, bwl)} | {lim['flops_per_token'] / 1e9:.2f} | "
                 f"{fmt(lim.get('compute_limit_tokens_per_s'), 1)} | "
                 f"{pct(med(r['ours'].get(tg)), lim.get('compute_limit_tokens_per_s'))} |")
    L.append("")
    L.append(targets(rows, args))
    return "\n".join(L)


def targets(rows, args) -> str:
    """The issue's 'done when' list, evaluated on this run's figures."""
    pp, tg = f"pp{args.n_prompt}", f"tg{args.n_gen}"
    tgd = f"tg{args.n_gen} @ d{args.depth}"

    def check(name, keys, bound):
        rs = [ratio(med(r["ours"].get(name)), med(r["theirs"].get(name)))
              for r in rows if r["key"] in keys]
        rs = [x for x in rs if x is not None]
        if not rs:
            return "not measured"
        ok = all(x >= bound for x in rs)
        return f"{'met' if ok else 'not met'} (ratios {min(rs):.2f}–{max(rs):.2f} over {len(rs)} runs)"

    dec_keys = {"Q4_K_M", "Q8_0", "Q4_0", "qwen-coder", "smollm2"}
    all_keys = {r["key"] for r in rows}
    L = ["### The issue's targets on this run\n"]
    L.append(f"- Decode ≥ 1.0× llama.cpp (Q4_K_M, Q8_0, Q4_0, both real models): {check(tg, dec_keys, 1.0)}; "
             f"target 1.2×: {check(tg, dec_keys, 1.2)}")
    L.append(f"- Prefill ({pp}) ≥ 0.8×: {check(pp, all_keys, 0.8)}; target 1.0×: {check(pp, all_keys, 1.0)}")
    L.append(f"- Decode at depth {args.depth} ≥ 0.8×: {check(tgd, all_keys, 0.8)}")
    rss = [(r["baimo_json"]["peak_rss_mb"], (r["baimo_json"]["file_bytes"] + r["baimo_json"]["kv_bytes"]) / 2**20 + 150)
           for r in rows if r.get("baimo_json") and r["baimo_json"].get("peak_rss_mb") and r["baimo_json"].get("file_bytes")]
    if rss:
        bad = sum(1 for a, b in rss if a > b)
        L.append(f"- Peak RSS ≤ file + KV + 150 MiB: {'met' if not bad else f'not met in {bad} of {len(rss)} runs'}")
    loads = [r["baimo_json"]["load_s"] for r in rows if r["key"] in ("Q4_K_M", "qwen-coder") and r.get("baimo_json")]
    if loads:
        L.append(f"- Load to first token < 1 s for the 0.5B Q4_K_M: {'met' if max(loads) < 1 else 'not met'} "
                 f"({min(loads):.2f}–{max(loads):.2f} s)")
    return "\n".join(L) + "\n"


def machine(bw, bwj) -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    g = lambda k: (re.search(rf"^{k}:\s*(.*)$", lscpu, re.M) or [None, "?"])[1]
    flags = g("Flags").split()
    simd = [f for f in ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    bws = ", ".join(f"{bw[t]:.1f} GB/s with {t} thread{'s' if t > 1 else ''}" for t in sorted(bw)) or "not measured"
    cpus = g(r"CPU\(s\)")
    return (f"Machine: {g('Model name')}, {cpus} CPUs, L3 {g('L3 cache')}, SIMD {' '.join(simd)}; "
            f"memory read bandwidth (membw.c, best of 10) {bws}.")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tgt = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--baimo", default=str(Path(tgt) / "release" / "baimo"))
    ap.add_argument("--llama-bench", default=str(PEERS / "llama.cpp-build/bin/llama-bench"))
    ap.add_argument("--models-dir", default="/work/bench-models", help="make_models.py --out folder")
    ap.add_argument("--models", default=",".join(SHAPED + list(REAL)))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4096)
    ap.add_argument("--depth-models", default="Q8_0,qwen-coder", help="models also timed at --depth")
    ap.add_argument("--no-depth", action="store_true")
    ap.add_argument("--no-warmup", action="store_true", help="skip both programs' warm-up runs")
    ap.add_argument("--no-llamacpp", action="store_true", help="time baimo only")
    ap.add_argument("--membw-json", default=None, help="membw.py output (read, or written by --measure-bw)")
    ap.add_argument("--measure-bw", action="store_true", help="run ../shared/bench/membw.py first")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "bench"))
    ap.add_argument("--json", default=None, help="write all raw results here")
    ap.add_argument("--update", default=None, help="rewrite the marked results section of this markdown file")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args()

    if not Path(args.baimo).exists():
        raise SystemExit(f"{args.baimo}: not built (cargo build --release -p baimo)")
    bw, bwj = membw(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    load0 = os.getloadavg()
    depth_keys = set() if args.no_depth else set(args.depth_models.split(","))
    rows, order = [], 0
    for label, key, gguf in models(args):
        if not Path(gguf).exists():
            log(f"skip {label}: {gguf} missing")
            continue
        for th in [int(x) for x in args.threads.split(",")]:
            row = {"label": label, "key": key, "gguf": gguf, "threads": th, "ours": {}, "theirs": {}}
            jobs = [("base", args.n_prompt, args.n_gen, 0)]
            if key in depth_keys:
                jobs.append(("depth", 0, args.n_gen, args.depth))
            for tag, p, n, d in jobs:
                if args.dry_run:
                    print(f"{label} t{th}: baimo bench -p {p} -n {n} -d {d}; llama-bench -p {p} -n {n} -d {d}")
                    continue
                sides = ["ours", "theirs"] if order % 2 == 0 else ["theirs", "ours"]
                order += 1
                for side in sides:
                    if side == "ours":
                        r = baimo_run(args, gguf, th, p, n, d, bw.get(th))
                        if r:
                            for t in r["tests"]:
                                row["ours"][t["name"]] = t["tokens_per_s"]
                            if tag == "base":
                                row["baimo_json"] = r
                            else:
                                row["baimo_depth_json"] = r
                    elif not args.no_llamacpp:
                        r = llama_run(args, gguf, th, p, n, d)
                        if r:
                            for name, t in r["tests"].items():
                                row["theirs"][name] = t["tokens_per_s"]
                            if tag == "base":
                                row["llama_rss"] = r["peak_rss_mb"]
                                row["llama_json"] = r
                            else:
                                row["llama_depth_json"] = r
            if not args.dry_run and not args.no_llamacpp:
                row["llama_load_s"] = llama_load_time(gguf, th)
            if not args.dry_run:
                rows.append(row)
                s = {k: (round(v["median"], 2) if v else None) for k, v in row["ours"].items()}
                t = {k: (round(v["median"], 2) if v else None) for k, v in row["theirs"].items()}
                log(f"{label} t{th}: baimo {s}  llama.cpp {t}")
    if args.dry_run:
        return
    finished = datetime.datetime.now(datetime.timezone.utc)
    head = (f"Run {started:%Y-%m-%d %H:%M}–{finished:%H:%M} UTC; {machine(bw, bwj)} "
            f"load average {load0[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end. "
            f"`{' '.join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))}`\n")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    build = next((r["llama_json"]["build"] for r in rows if r.get("llama_json")), {})
    head += (f"\nbaimo at commit {commit}; llama.cpp build {build.get('build_number', '?')} "
             f"({build.get('build_commit', '?')}), `llama-bench --repack 0`, default flash-attention (auto) "
             f"and F16 KV cache.\n")
    md = head + "\n" + tables(rows, args, bw)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"started": str(started), "finished": str(finished),
                                               "membw": bwj, "args": vars(args), "rows": rows}, indent=1) + "\n")
    if args.update:
        p = Path(args.update)
        text = p.read_text() if p.exists() else f"{MARK_BEGIN}\n{MARK_END}\n"
        if MARK_BEGIN not in text:
            text += f"\n{MARK_BEGIN}\n{MARK_END}\n"
        a, rest = text.split(MARK_BEGIN, 1)
        _, b = rest.split(MARK_END, 1)
        p.write_text(f"{a}{MARK_BEGIN}\n{md}\n{MARK_END}{b}")
        log(f"updated {p}")


if __name__ == "__main__":
    main()
