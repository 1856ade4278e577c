"""Child of bench/soak_bench.py: the whole chain raw → deduped → filtered → rewritten → mixed on one crawl.

Each stage gets its own process pool (closed at the stage's end, so its workers' CPU time is
in this process's RUSAGE_CHILDREN and a new stage starts with fresh workers). Before and after
each stage it prints a JSON line (event, stage, wall clock, CPU seconds of this process and its
reaped children, documents in and out), which the parent lines up with its memory samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time

from textmill.config import load_recipe
from textmill.executor import LocalProcessExecutor
from textmill.rewrite.backends import LlamaCppBackendConfig
from textmill.stages import deduped, filtered, mixed, raw, rewritten
from textmill.storage import Store


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def event(name: str, stage: str, **extra: object) -> None:
    print(json.dumps({"event": name, "stage": stage, "t": time.time(), "cpu_s": cpu_seconds()} | extra), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--crawl", required=True)
    ap.add_argument("--recipe", default="recipes/default.yaml")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rewrite-documents", type=int, default=4, help="the rewritten stage's LLM budget; 0 skips it")
    ap.add_argument("--rewrite-max-tokens", type=int, default=48)
    ap.add_argument("--mix-tokens", type=int, default=20_000_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    recipe = load_recipe(args.recipe)
    store = Store(args.root)
    mix = recipe.mixed[0].model_copy(update={"total_tokens": args.mix_tokens})
    versions: dict[str, str] = {}

    def stage_run(name: str, call) -> dict:
        event("start", name)
        with LocalProcessExecutor(workers=args.workers) as executor:
            result = call(executor)
        versions[name] = result.version
        stats = result.manifest.statistics
        documents_in = {"raw": stats.get("records_read"), "deduped": stats.get("documents_in"),
                        "filtered": stats.get("documents_in"), "rewritten": stats.get("selected"),
                        "mixed": stats.get("mix", {}).get("candidates", {}).get("documents")}[name]
        event("end", name, documents_in=documents_in, documents_out=int(stats.get("documents", result.manifest.rows)),
              version=result.version, reused=result.reused,
              statistics={k: v for k, v in stats.items() if isinstance(v, (int, float, str)) or k == "removed_by_kind"},
              timings=result.manifest.timings)
        return stats

    stage_run("raw", lambda ex: raw(store=store, crawl=args.crawl, config=recipe.raw, executor=ex))
    stage_run("deduped", lambda ex: deduped(store=store, crawl=args.crawl, raw_version=versions["raw"],
                                            config=recipe.deduped, executor=ex))
    stage_run("filtered", lambda ex: filtered(store=store, crawl=args.crawl, deduped_version=versions["deduped"],
                                              config=recipe.filtered, executor=ex))
    components = list(mix.components)
    if args.rewrite_documents > 0:
        config = recipe.rewritten.model_copy(update={
            "max_documents": args.rewrite_documents,
            "backend": LlamaCppBackendConfig(max_tokens=args.rewrite_max_tokens, n_threads=args.workers)})
        stage_run("rewritten", lambda ex: rewritten(store=store, crawl=args.crawl,
                                                    filtered_version=versions["filtered"], config=config,
                                                    filter_config=recipe.filtered))
    else:
        components = [c for c in components if c.kind != "rewritten"]
        mix = mix.model_copy(update={"components": components, "synthetic_cap": None})
    crawl_versions = {"filtered": versions["filtered"]} | (
        {"rewritten": versions["rewritten"]} if "rewritten" in versions else {})
    stage_run("mixed", lambda ex: mixed(store=store, config=mix, versions={args.crawl: crawl_versions}))
    print(json.dumps({"event": "done", "versions": versions}), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
