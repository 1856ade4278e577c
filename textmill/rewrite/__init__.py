"""LLM rewriting: backends now; prompts, batching and the cache come with the rewrite stage.

The backends are shared with model-based quality filtering, which grades documents with
the same LLM (`textmill.filters.quality_model.grade_documents`).
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
    "make_backend",
]
