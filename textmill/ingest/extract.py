"""HTML bytes to text: charset detection, then one of two extractors behind one interface.

`decode_html` tries, in order, the HTTP charset, a <meta> declaration, strict UTF-8, and
charset detection (charset-normalizer) for pages that declare nothing usable.
"""

from __future__ import annotations

import codecs
import itertools
import re
from typing import Callable, Literal

from charset_normalizer import from_bytes

ExtractorName = Literal["resiliparse", "trafilatura"]

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)


class UndecodableError(ValueError):
    """No charset turns these bytes into text."""


# codecs Python knows but no web page is in: transforms (rot13, base64, zlib: not text codecs
# at all), escapes, and UTF-7 (WHATWG forbids it: it smuggles markup past filters)
_NOT_WEB_CHARSETS = frozenset({"utf-7", "unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined",
                               "charmap"})


def _codec(charset: str) -> str | None:
    """Python's codec name for a charset label, or None when it is unknown or not a web text encoding."""
    try:
        info = codecs.lookup(charset.strip()[:64])
    except (LookupError, ValueError, TypeError):  # ValueError: a NUL in the label
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_WEB_CHARSETS:
        return None
    return info.name


def _try_decode(data: bytes, charset: str | None) -> str | None:
    if not charset or (name := _codec(charset)) is None:
        return None
    if name.startswith(("utf-16", "utf-32")) and b"\x00" not in data[:4096]:
        return None  # a UTF-16/32 label on bytes without a NUL: the label is wrong
    if name == "iso8859-1":
        # browsers (WHATWG Encoding) read a latin-1 label as windows-1252: 0x80-0x9F are
        # curly quotes and dashes, not C1 control characters
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            pass  # one of cp1252's five unassigned bytes: plain latin-1 below
    try:
        return data.decode(name)
    except (UnicodeError, ValueError, LookupError):
        return None


def _mostly_utf8(data: bytes, *, declared: bool) -> str | None:
    """UTF-8 with U+FFFD for the few bytes that are not (a latin-1 line pasted into a UTF-8 page), else None.

    At most 1% of the characters may be replacements. Declared UTF-8 is then read as UTF-8,
    as browsers do; undeclared bytes only when they hold more valid multi-byte characters than
    invalid bytes (text in a single-byte charset almost never forms valid UTF-8 sequences).
    """
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    if bad > 0.01 * len(text):
        return None
    good = len(text) - len(text.encode("ascii", "ignore")) - bad
    return text if declared or good > bad else None


def decode_html(data: bytes, *, declared: str | None = None) -> tuple[str, str]:
    """Decode HTML bytes; returns (text, how) where `how` names the charset source used."""
    text = _try_decode(data, declared)
    if text is not None:
        return text, f"http:{declared.lower()}"  # type: ignore[union-attr]
    meta = _META_CHARSET.search(data[:4096])
    if meta:
        charset = meta.group(1).decode("ascii", "ignore")
        if (_codec(charset) or "").startswith("utf-16"):
            charset = "utf-8"  # WHATWG: a <meta> can only be read if the page is ASCII-compatible
        text = _try_decode(data, charset)
        if text is not None:
            return text, f"meta:{charset.lower()}"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    declared_utf8 = any(_codec(c or "") == "utf-8" for c in (declared, meta and meta.group(1).decode("ascii", "ignore")))
    if (text := _mostly_utf8(data, declared=declared_utf8)) is not None:
        return text, "utf-8-lossy"
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


# Elements that do not nest (void) or that the parser closes by itself (p, li, td, ...): they
# do not deepen the tree, so they do not count towards the depth.
_FLAT_TAGS = frozenset("area base br col embed hr img input link meta param source track wbr "
                       "p li dt dd tr td th option".split())
_TAG_START = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)")
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)(?:[^>\"']|\"[^\"]*\"|'[^']*')*(/?)>")
MAX_DEPTH = 200  # lxml (trafilatura) stops at 256 levels; resiliparse slows quadratically with depth


_OPEN_OR_CLOSE = re.compile(r"<(/?)(?!(?:%s)[\s/>])[A-Za-z]" % "|".join(sorted(_FLAT_TAGS)), re.IGNORECASE)
_STEP = {"": 1, "/": -1}


_ANY_OPEN_OR_CLOSE = re.compile(r"<(/?)[A-Za-z]")


def _depth_bound(html: str, pattern: re.Pattern[str] = _OPEN_OR_CLOSE) -> int:
    """An upper bound of the element depth: the running count of open minus close tags."""
    return max(itertools.accumulate(map(_STEP.__getitem__, pattern.findall(html))), default=0)


def flatten_deep(html: str, *, max_depth: int = MAX_DEPTH) -> str:
    """Drop the tags (not the text) nested deeper than `max_depth`, as browsers flatten absurd trees.

    100,000 nested <div>s take resiliparse minutes and leave lxml an empty tree; real pages
    are far shallower and come back unchanged.
    """
    # a coarse bound first (void tags count as open: ~0.3 ms for 40 KB), the finer one only past it
    if _depth_bound(html, _ANY_OPEN_OR_CLOSE) <= max_depth or _depth_bound(html) <= max_depth:
        return html
    depth = 0

    def keep(match: re.Match[str]) -> str:
        nonlocal depth
        close, name, self_closing = match.group(1), match.group(2).lower(), match.group(3)
        if name in _FLAT_TAGS or self_closing:
            return match.group(0) if depth <= max_depth else " "
        if close:
            depth = max(0, depth - 1)
            return match.group(0) if depth < max_depth else " "
        depth += 1
        return match.group(0) if depth <= max_depth else " "

    return _TAG.sub(keep, html)


def extract_text(html: str, *, extractor: ExtractorName = "resiliparse", main_content: bool = True) -> str:
    """Main text of an HTML page with the named extractor."""
    return EXTRACTORS[extractor](flatten_deep(html), main_content=main_content).strip()
