"""Rebuild ``questions.parquet`` from the shared eval-benchmarks folder (a maintainer's script, not runtime).

Only the question / prompt text of each evaluation item is kept (what a training document could have
copied), one row per item: ``benchmark``, ``split``, ``item`` (row number in the source file), ``text``.
Usage: ``python -m textmill.benchmarks._build [SOURCE_DIR]`` (default ``../shared/data/eval-benchmarks``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

import polars as pl

HERE = Path(__file__).parent
TEMPLATE_LABELS = r"(?m)^(?:Question|Passage|Context|Choices|Answer):[ \t]*"
# llm-foundry gauntlet file -> the field(s) holding the question text
GAUNTLET = {
    "arc_challenge": ("arc_challenge", "query"), "arc_easy": ("arc_easy", "query"),
    "agi_eval_sat_en": ("agi_eval_sat_en", "query"), "boolq": ("boolq", "query"),
    "commonsense_qa": ("commonsense_qa", "query"), "copa": ("copa", "query"),
    "openbook_qa": ("openbook_qa", "query"), "siqa": ("siqa", "query"), "piqa": ("piqa", "query"),
    "lambada_openai": ("lambada", "context"), "triviaqa_sm_sub": ("triviaqa", "context"),
    "jeopardy_all": ("jeopardy", "context"), "bigbench_qa_wikidata": ("bigbench_qa_wikidata", "context"),
    "winogrande": ("winogrande", "context_options"), "hellaswag_small": ("hellaswag", "query"),
}


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build(source: Path) -> pl.DataFrame:
    rows: list[dict] = []
    for i, r in enumerate(_jsonl(source / "HumanEval.jsonl.gz")):
        rows.append({"benchmark": "humaneval", "split": "test", "item": i, "text": r["prompt"]})
    for i, r in enumerate(_jsonl(source / "gsm8k-test.jsonl.gz")):
        rows.append({"benchmark": "gsm8k", "split": "test", "item": i, "text": r["question"]})
    with tarfile.open(source / "mmlu-hendrycks-2020-09-08-csv.tar.xz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not member.name.endswith(".csv"):
                continue
            split = member.name.split("/")[-2]
            text = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
            for i, rec in enumerate(csv.reader(io.StringIO(text))):
                rows.append({"benchmark": "mmlu", "split": split, "item": i,
                             "text": rec[0] + "\n" + "\n".join(rec[1:5])})
    for name, (bench, field) in GAUNTLET.items():
        path = next(p for p in (source / "llm-foundry-gauntlet" / f"{name}.jsonl.gz",
                                source / "llm-foundry-gauntlet" / f"{name}.jsonl") if p.exists())
        for i, r in enumerate(_jsonl(path)):
            value = r[field]
            if field == "context_options":  # winogrande: the sentence with the blank filled both ways
                value = value[0] + " " + r.get("continuation", "")
            elif bench == "piqa":
                value = r["query"]
            rows.append({"benchmark": bench, "split": "eval", "item": i, "text": str(value)})
    frame = pl.DataFrame(rows, schema={"benchmark": pl.String, "split": pl.String, "item": pl.UInt32,
                                       "text": pl.String})
    # the ICL templates' labels are not benchmark text: drop them so they cannot make up n-grams
    return frame.with_columns(pl.col("text").str.replace_all(TEMPLATE_LABELS, "").str.strip_chars())


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data/eval-benchmarks")
    frame = build(src)
    frame.write_parquet(HERE / "questions.parquet", compression="zstd", compression_level=19)
    print(frame.group_by("benchmark").len().sort("benchmark"))
