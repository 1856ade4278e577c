"""The data card files exist, carry HF-style front matter and the key numbers."""

from pathlib import Path

import yaml

from textmill.report.card import write_data_card


def test_card(tmp_path: Path) -> None:
    upstream = {
        "raw": [{"partition": "CC-2024-10", "statistics": {"documents": 1000, "languages": {"en": 900, "fr": 100},
                                                           "quarantined": {"bad": 3}}}],
        "deduped": [{"statistics": {"documents_in": 1000, "documents": 800, "removed_by_kind": {"exact": 150, "near": 50}}}],
        "filtered": [{"statistics": {"documents_in": 800, "documents": 500, "removed_by_rule_set": {"gopher": 300}}}],
        "rewritten": [{"statistics": {"selected": 120, "documents": 100}}],
    }
    mix_stats = {"seed": 3, "decontamination": {"removed": 7, "ngram": 13, "by_benchmark": {"mmlu": 5, "gsm8k": 2}},
                 "phases": {"main": {"tokens": 123_456, "documents": 650, "unique_documents": 590, "budget_tokens": 125_000,
                                     "budget_error": 0.0124, "max_share_error": 0.01, "tolerance": 0.02,
                                     "within_tolerance": True, "synthetic_share": 0.15, "synthetic_cap": 0.2,
                                     "languages": {"en": 110_000, "fr": 13_456},
                                     "components": {"web": {"kind": "kept", "target_share": 0.85, "share": 0.85,
                                                            "tokens": 104_938, "epochs": 1.0, "shortfall_tokens": 0},
                                                    "syn": {"kind": "rewritten", "target_share": 0.15, "share": 0.15,
                                                            "tokens": 18_518, "epochs": 1.2, "shortfall_tokens": 0}}}},
                 "packed": {"packer": "best_fit", "sequences": 61, "sequence_length": 2048, "padding_rate": 0.01,
                            "truncation_rate": 0.02}}
    paths = write_data_card(folder=str(tmp_path), mix_stats=mix_stats, upstream_manifests=upstream,
                            lengths=[10, 100, 1000, 5000])
    readme = Path(paths["readme"]).read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert front["dataset_info"]["tokens"] == 123_456 and front["language"] == ["en", "fr"]
    assert "CC-2024-10" in front["source_datasets"]
    for needle in ["123,456", "| deduped | 800 | 200 |", "| decontaminated | 593 | 7 |", "dedup rate: 0.2",
                   "filter keep rate: 0.625", "rewrite pass rate: 0.833333", '"mmlu": 5']:
        assert needle in readme, needle
    report = Path(paths["report"]).read_text()
    assert report.count("<svg") >= 6 and "Documents left after each stage" in report and "104,938" in report
