"""Blocking checks of a mixed version: proportions, budget, epochs, contamination, synthetic cap."""

from __future__ import annotations

import polars as pl

from checks.base import CheckOutcome
from textmill.mix.config import MixConfig
from textmill.mix.decontam import find_contamination, index_for
from textmill.storage import Manifest

CHECK_NAMES = {
    "mixed_proportions_within_tolerance": "every component's token share is within the recipe's tolerance of its target",
    "mixed_budget_met": "the mix's tokens are within the tolerance of the budget (a shortfall is reported, never hidden)",
    "mixed_epochs_within_cap": "no component is repeated more than its epoch cap",
    "mixed_no_contamination": "no document of the mix shares an n-gram with a bundled benchmark question",
    "mixed_synthetic_cap": "rewritten documents stay within the synthetic-to-real cap",
}


def run_mixed_checks(mix: pl.LazyFrame, manifest: Manifest, config: MixConfig) -> list[CheckOutcome]:
    phases = manifest.statistics["mix"].get("phases", {})
    outcomes: list[CheckOutcome] = []
    share_errors, budget_errors, epochs_over, synthetic = {}, {}, {}, {}
    for name, phase in phases.items():
        share_errors[name] = phase.get("max_share_error", 0.0)
        budget_errors[name] = phase.get("budget_error", 0.0)
        for component, item in phase.get("components", {}).items():
            if item["epochs"] > item["max_epochs"] + 1e-9:
                epochs_over[f"{name}/{component}"] = item["epochs"]
        synthetic[name] = phase.get("synthetic_share", 0.0)
    tolerance = config.tolerance
    outcomes.append(CheckOutcome("mixed_proportions_within_tolerance",
                                 all(e <= tolerance for e in share_errors.values()),
                                 CHECK_NAMES["mixed_proportions_within_tolerance"],
                                 metadata={"max_share_error": share_errors, "tolerance": tolerance}))
    outcomes.append(CheckOutcome("mixed_budget_met", all(e <= tolerance for e in budget_errors.values()),
                                 CHECK_NAMES["mixed_budget_met"],
                                 metadata={"budget_error": budget_errors, "tolerance": tolerance}))
    outcomes.append(CheckOutcome("mixed_epochs_within_cap", not epochs_over, CHECK_NAMES["mixed_epochs_within_cap"],
                                 metadata={"over_cap": epochs_over}))
    left = 0
    if config.decontamination.enabled:
        documents = mix.select("id", "text").unique("id").collect()
        left = find_contamination(documents, index=index_for(config.decontamination))["id"].n_unique() \
            if documents.height else 0
    outcomes.append(CheckOutcome("mixed_no_contamination", left == 0, CHECK_NAMES["mixed_no_contamination"],
                                 metadata={"contaminated_documents_left": left,
                                           "removed": manifest.statistics["mix"]["decontamination"]["removed"]}))
    cap = config.synthetic_cap
    outcomes.append(CheckOutcome("mixed_synthetic_cap",
                                 cap is None or all(s <= cap + tolerance for s in synthetic.values()),
                                 CHECK_NAMES["mixed_synthetic_cap"], metadata={"synthetic_share": synthetic, "cap": cap}))
    return outcomes
