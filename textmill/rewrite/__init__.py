"""LLM rewriting: REWIRE-style recycling of rejected documents and WRAP-style rephrasing.

    inputs = select_inputs(rejected, kept, config=cfg)              # recyclable rejects, budget
    backend = make_rewrite_backend(cfg)                              # HTTP server or llama.cpp in process
    result = rewrite_documents(inputs, config=cfg, backend=backend,  # cached, judged, re-scored
                               cache=RewriteCache(store), rescorer=Rescorer(recipe.filtered))

The backends are shared with model-based quality filtering, which grades documents with
the same LLM (`textmill.filters.quality_model.grade_documents`). docs/rewrite.md has the
design, drop reasons and measured throughput.
"""

from textmill.rewrite.backends import (
    BackendConfig,
    BackendError,
    BackendTimeout,
    Completion,
    LlamaCppBackend,
    LlamaCppBackendConfig,
    LLMBackend,
    OpenAIBackend,
    OpenAIBackendConfig,
    RateLimiter,
    bundled_smollm2_gguf,
    make_backend,
)

__all__ = [
    "BackendConfig",
    "BackendError",
    "BackendTimeout",
    "Completion",
    "LLMBackend",
    "LlamaCppBackend",
    "LlamaCppBackendConfig",
    "OpenAIBackend",
    "OpenAIBackendConfig",
    "RateLimiter",
    "bundled_smollm2_gguf",
    "make_backend",
    # lazily imported (they pull in polars and the filters): see __getattr__
    "RewriteCache",
    "RewriteConfig",
    "RewriteResult",
    "RewriteStats",
    "PostprocessConfig",
    "RewriteChecks",
    "Rescorer",
    "PROMPTS",
    "Prompt",
    "get_prompt",
    "make_rewrite_backend",
    "rewrite_documents",
    "select_inputs",
]

_LAZY = {
    "RewriteCache": "textmill.rewrite.cache",
    "RewriteConfig": "textmill.rewrite.config",
    "PostprocessConfig": "textmill.rewrite.config",
    "RewriteChecks": "textmill.rewrite.config",
    "RewriteResult": "textmill.rewrite.engine",
    "RewriteStats": "textmill.rewrite.engine",
    "make_rewrite_backend": "textmill.rewrite.engine",
    "rewrite_documents": "textmill.rewrite.engine",
    "Rescorer": "textmill.rewrite.postprocess",
    "PROMPTS": "textmill.rewrite.prompts",
    "Prompt": "textmill.rewrite.prompts",
    "get_prompt": "textmill.rewrite.prompts",
    "select_inputs": "textmill.rewrite.select",
}


def __getattr__(name: str):  # lazy: quality_model imports backends without loading the whole stage
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'textmill.rewrite' has no attribute {name!r}")
