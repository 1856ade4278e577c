"""Sampling meets the budget and shares, is deterministic by seed, and reports epoch-cap shortfalls."""

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from textmill.mix.config import MixComponent, MixConfig
from textmill.mix.sample import sample_mix


def _candidates() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    sizes = {"web": 20_000, "syn": 4_000, "small": 50}
    comp = [c for c, n in sizes.items() for _ in range(n)]
    n = len(comp)
    return pl.DataFrame({"component": comp, "id": [f"d{i}" for i in range(n)],
                         "tokens": rng.integers(50, 1500, n), "lang": rng.choice(["en", "fr"], n, p=[0.8, 0.2])})


def _config(**kw) -> MixConfig:
    comps = [MixComponent(name="web", kind="kept", token_share=0.7),
             MixComponent(name="syn", kind="rewritten", token_share=0.3)]
    return MixConfig(components=kw.pop("components", comps), total_tokens=kw.pop("total_tokens", 3_000_000), **kw)


def test_budget_and_shares_within_tolerance_and_deterministic() -> None:
    cand = _candidates()
    a = sample_mix(cand, config=_config(seed=7))
    main = a.stats["phases"]["main"]
    assert main["within_tolerance"] and abs(main["tokens"] - 3_000_000) / 3_000_000 <= 0.02
    assert abs(main["components"]["syn"]["share"] - 0.3) <= 0.02
    assert a.order.equals(sample_mix(cand, config=_config(seed=7)).order)
    assert not a.order.equals(sample_mix(cand, config=_config(seed=8)).order)
    assert a.order["position"].to_list() == list(range(a.order.height))


def test_small_component_repeats_to_cap_and_reports_shortfall() -> None:
    comps = [MixComponent(name="web", kind="kept", token_share=0.8),
             MixComponent(name="small", kind="files", paths=["x.jsonl"], token_share=0.2, max_epochs=3)]
    s = sample_mix(_candidates(), config=_config(components=comps))
    small = s.stats["phases"]["main"]["components"]["small"]
    assert small["epoch_capped"] and small["shortfall_tokens"] > 0
    assert small["tokens"] == 3 * small["tokens_available"] and small["epochs"] == 3
    assert s.order.filter(pl.col("component") == "small")["epoch"].max() == 2
    assert small["target_tokens"] - small["tokens"] == pytest.approx(small["shortfall_tokens"], abs=1)
    assert not s.stats["within_tolerance"]  # the shortfall is not hidden by re-weighting others


def test_synthetic_cap_and_language_temperature() -> None:
    s = sample_mix(_candidates(), config=_config(synthetic_cap=0.1, language_temperature=5.0))
    main = s.stats["phases"]["main"]
    assert main["synthetic_cap_applied"] and abs(main["synthetic_share"] - 0.1) <= 0.02
    fr = main["components"]["web"]["languages"]["fr"]["tokens"] / main["components"]["web"]["tokens"]
    assert fr > 0.3  # flattened from ~0.2 natural towards 0.5


def test_weights_and_anneal() -> None:
    comps = [MixComponent(name="web", kind="kept", weight=1.0), MixComponent(name="syn", kind="rewritten", weight=2.0)]
    anneal = {"total_tokens": 200_000, "components": [{"name": "syn", "kind": "rewritten", "token_share": 1.0}]}
    s = sample_mix(_candidates(), config=_config(components=comps, anneal=anneal))
    main = s.stats["phases"]["main"]["components"]
    natural = main["syn"]["tokens_available"] / (main["syn"]["tokens_available"] + main["web"]["tokens_available"])
    assert main["syn"]["target_share"] > natural
    tail = s.order.filter(pl.col("phase") == "anneal")
    assert tail["component"].unique().to_list() == ["syn"] and tail["position"].min() == s.order.filter(
        pl.col("phase") == "main").height


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        MixComponent(name="a", kind="kept", weight=1.0, token_share=0.5)
    with pytest.raises(ValidationError):
        _config(components=[MixComponent(name="a", kind="kept", token_share=0.5),
                            MixComponent(name="b", kind="kept", token_share=0.4)])
    with pytest.raises(ValidationError):
        _config(components=[MixComponent(name="a", kind="kept", token_share=0.5),
                            MixComponent(name="b", kind="kept", weight=1.0)])
    with pytest.raises(ValidationError):
        MixComponent(name="f", kind="files", weight=1.0)
    with pytest.raises(ValidationError):
        _config(unknown=1)
