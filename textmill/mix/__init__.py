"""The `mixed` version's core: recipe, tokens, decontamination, sampling, packing (no orchestrator imports)."""

from textmill.mix.config import AnnealConfig, DecontamConfig, ExportConfig, MixComponent, MixConfig

__all__ = ["AnnealConfig", "DecontamConfig", "ExportConfig", "MixComponent", "MixConfig"]
