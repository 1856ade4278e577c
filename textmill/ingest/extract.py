"""HTML bytes to text: charset detection, then one of two extractors behind one interface.

`decode_html` tries, in order, the HTTP charset, a <meta> declaration, strict UTF-8, and
charset detection (charset-normalizer) for pages that declare nothing usable.
"""

from __future__ import annotations

import codecs
import re
from typing import Callable, Literal

from charset_normalizer import from_bytes

ExtractorName = Literal["resiliparse", "trafilatura"]

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)


class UndecodableError(ValueError):
    """No charset turns these bytes into text."""


def _try_decode(data: bytes, charset: str | None) -> str | None:
    if not charset:
        return None
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return None
    if name == "iso8859-1":
        # browsers (WHATWG Encoding) read a latin-1 label as windows-1252: 0x80-0x9F are
        # curly quotes and dashes, not C1 control characters
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            pass  # one of cp1252's five unassigned bytes: plain latin-1 below
    try:
        return data.decode(name)
    except UnicodeDecodeError:
        return None


def decode_html(data: bytes, *, declared: str | None = None) -> tuple[str, str]:
    """Decode HTML bytes; returns (text, how) where `how` names the charset source used."""
    text = _try_decode(data, declared)
    if text is not None:
        return text, f"http:{declared.lower()}"  # type: ignore[union-attr]
    meta = _META_CHARSET.search(data[:4096])
    if meta:
        charset = meta.group(1).decode("ascii", "ignore")
        text = _try_decode(data, charset)
        if text is not None:
            return text, f"meta:{charset.lower()}"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    best = from_bytes(data[:1 << 18]).best()
    if best is not None and best.encoding:
        text = _try_decode(data, best.encoding)
        if text is not None:
            return text, f"detected:{best.encoding}"
    raise UndecodableError("no declared or detected charset decodes the payload")


def extract_resiliparse(html: str, *, main_content: bool = True) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    return extract_plain_text(
        tree, main_content=main_content, alt_texts=False, links=False, form_fields=False, noscript=False,
        comments=False,
    )


def extract_trafilatura(html: str, *, main_content: bool = True) -> str:
    import trafilatura

    # trafilatura has no faithful whole-page mode (html2txt flattens and drops parts), so the
    # recipe only allows main_content: false with resiliparse (see RawConfig)
    text = trafilatura.extract(
        html,
        include_comments=False,
        include_tables=True,
        favor_precision=False,
        deduplicate=False,
        with_metadata=False,
    )
    return text or ""


EXTRACTORS: dict[str, Callable[..., str]] = {
    "resiliparse": extract_resiliparse,
    "trafilatura": extract_trafilatura,
}


def extract_text(html: str, *, extractor: ExtractorName = "resiliparse", main_content: bool = True) -> str:
    """Main text of an HTML page with the named extractor."""
    return EXTRACTORS[extractor](html, main_content=main_content).strip()
