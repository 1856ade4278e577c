"""The offline tokenizer gives real cl100k_base token ids and counts (no network)."""

import numpy as np
import polars as pl

from textmill.mix.tokens import count_tokens, encode, eos_token, get_encoding


def test_known_cl100k_tokens() -> None:
    enc = get_encoding("cl100k_base")
    assert enc.encode_ordinary("hello world") == [15339, 1917]
    assert enc.encode_ordinary("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert eos_token() == 100257


def test_count_and_encode_batches() -> None:
    texts = pl.Series("text", ["hello world", "tiktoken is great!", "", None] * 3)
    assert count_tokens(texts, batch_size=5).to_list() == [2, 6, 0, 0] * 3
    flat, offsets = encode(texts, batch_size=5)
    assert flat.dtype == np.uint32 and offsets.tolist()[:5] == [0, 2, 8, 8, 8]
    assert flat[:2].tolist() == [15339, 1917] and offsets[-1] == flat.shape[0] == 24
