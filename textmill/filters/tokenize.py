"""Word tokens of whole batches of documents, as Polars expressions over a token frame.

The Gopher, C4 and FineWeb rules count *words*, and their thresholds were tuned with a
particular tokenizer: datatrove (the reference implementation of FineWeb) uses spaCy's
English tokenizer for English. To keep decisions comparable, this module reproduces its
rules with Rust regular expressions (no look-around) instead of running spaCy:

1. split on whitespace into chunks;
2. a whole chunk that is a known exception (contraction, abbreviation, emoticon) is
   tokenized by the exception table;
3. otherwise a leading run of prefix characters (quotes, brackets, punctuation, currency)
   and a trailing run of suffix characters (punctuation, quotes, `'s`, ellipses) are split
   off one by one; a final `.` is split off only after a lower-case letter, a digit, a
   punctuation mark, or two capitals (so `U.S.` and `J.` stay whole), and never from a
   listed abbreviation (`Mr.`, `e.g.`);
4. a number followed by a unit or currency (`10km`, `5$`) is split;
5. the remaining core is kept whole if it looks like a URL, else split at infixes:
   ellipses, symbols, hyphens and `:<>=/` between letters, `,` between letters, `.` between
   a lower-case and an upper-case letter, arithmetic operators between digits.

Chunks are tokenized once per distinct chunk of the batch (a vocabulary) and joined back,
so the regex work scales with the vocabulary, not the corpus. Differences from spaCy are
listed in docs/filter-parity.md; the exception lists follow spaCy's English tokenizer
exceptions (MIT licence) in spirit, written out here as rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import polars as pl


def literal(text: str) -> str:
    """`text` as a regex matching it literally (every character escaped by code point)."""
    return "".join(f"\\x{{{ord(c):x}}}" for c in text)


def char_class(chars: str, *, negate: bool = False, extra: str = "") -> str:
    """A regex character class matching exactly `chars` plus the raw class items in `extra`."""
    return f"[{'^' if negate else ''}{literal(''.join(dict.fromkeys(chars)))}{extra}]"


# --- character sets -----------------------------------------------------------------------

PUNCT_CHARS = "…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"
QUOTE_CHARS = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉⟦⟧"
CURRENCY_CHARS = "$£€¥฿₽﷼₴₠₡₢₣₤₥₦₧₨₩₪₫₭₮₯₰₱₲₳₵₶₷₸₹₺₻₼₾₿"
UNITS = (
    "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz m/s km/h kmh "
    "mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K %"
).split()
HYPHENS = ("---", "--", "——", "-", "–", "—", "~")
SYMBOLS = r"\p{So}"  # dingbats, emoji, box drawing: split off wherever they occur

_PREFIX_ITEM = "|".join([r"\.\.+", "US\\$", "C\\$", "A\\$",
                         char_class(PUNCT_CHARS + QUOTE_CHARS + CURRENCY_CHARS + "§%=—–+", extra=SYMBOLS)])
_SUFFIX_CHAR = char_class(PUNCT_CHARS + QUOTE_CHARS + "—–", extra=SYMBOLS)
_SUFFIX_ITEM = "|".join([r"\.\.+", "['’][sS]\\.?", f"{_SUFFIX_CHAR}\\.?"])
_AFFIX_SPLIT = f"(?s)^(?P<pre>(?:{_PREFIX_ITEM})*)(?P<core>.*?)(?P<suf>(?:{_SUFFIX_ITEM})*)$"
_PREFIX_TOKEN = r"\.\.+|US\$|C\$|A\$|."
_SUFFIX_TOKEN = r"\.\.+|['’][sS]|''|’’|\):|."  # "''", "’’" and "):" are single tokens (exceptions)
# a final "." is a suffix after these (or after two capitals)
_DOT_SUFFIX = ("(?:" + char_class("0123456789%²-+" + PUNCT_CHARS + QUOTE_CHARS, extra=r"\p{Ll}\p{Lo}")
               + r"|\p{Lu}\p{Lu})\.$")
_UNITS_ALT = "|".join(literal(u) for u in sorted(UNITS + ["US$", "C$", "A$", "+"], key=len, reverse=True))
_UNIT_SPLIT = f"^(?P<num>.*[0-9])(?P<unit>{_UNITS_ALT}|{char_class(CURRENCY_CHARS)})$"

_LOWER = r"\p{Ll}\p{Lo}"
_UPPER = r"\p{Lu}\p{Lo}"
_QUOTE_BODY = char_class(QUOTE_CHARS)[1:-1]
_HYPHEN_ALT = "|".join(literal(h) for h in HYPHENS)
# infix rules: the token x is split off between the contexts a and b
_INFIXES = (
    r"(?P<a>[0-9])(?P<x>[+\-*^])(?P<b>[0-9\-])",
    f"(?P<a>[{_LOWER}{_QUOTE_BODY}])(?P<x>\\.)(?P<b>[{_UPPER}{_QUOTE_BODY}])",
    r"(?P<a>\p{L})(?P<x>,)(?P<b>\p{L})",
    f"(?P<a>[\\p{{L}}0-9])(?P<x>{_HYPHEN_ALT})(?P<b>\\p{{L}})",
    r"(?P<a>[\p{L}0-9])(?P<x>[:<>=/])(?P<b>\p{L})",
)
_INFIX_CANDIDATE = r"[0-9][+\-*^][0-9\-]|\.|…|\p{L},\p{L}|[-–—~:<>=/]|\p{So}"

# URLs (after affixes are stripped) are never split at infixes; a regex in the spirit of
# the one spaCy uses: optional scheme and user, a dotted host or IPv4 address, port, path
_URL = (
    r"^(?:[\w+\-.]{2,}://)?(?:\S+(?::\S*)?@)?"
    r"(?:(?:[1-9]\d?|1\d\d|2[01]\d|22[0-3])(?:\.(?:1?\d{1,2}|2[0-4]\d|25[0-5])){2}\.(?:[1-9]\d?|1\d\d|2[0-4]\d|25[0-4])"
    r"|(?:(?:[A-Za-z0-9\x{a1}-\x{ffff}][A-Za-z0-9\x{a1}-\x{ffff}_\-]{0,62})?[A-Za-z0-9\x{a1}-\x{ffff}]\.)+"
    r"[\p{Ll}\p{Lo}]{2,63})(?::\d{2,5})?(?:[/?#]\S*)?$"
)


# --- exceptions ---------------------------------------------------------------------------

_NT_STEMS = ("ai", "are", "ca", "could", "dare", "did", "does", "do", "had", "has", "have", "is", "may",
             "might", "must", "need", "ought", "sha", "should", "was", "were", "wo", "would")
_PRONOUN_CLITICS = {
    "i": ("m", "ve", "ll", "d"), "you": ("re", "ve", "ll", "d"), "he": ("ll", "d", "s"),
    "she": ("ll", "d", "s"), "it": ("ll", "d"), "we": ("re", "ve", "ll", "d"),
    "they": ("re", "ve", "ll", "d"), "that": ("ll", "d", "s"), "there": ("re", "ve", "ll", "d", "s"),
    "these": ("re", "ve", "ll", "d"), "this": ("ll", "d", "s"), "those": ("re", "ve", "ll", "d"),
    "what": ("re", "ve", "ll", "d", "s"), "when": ("re", "ve", "ll", "d", "s"),
    "where": ("re", "ve", "ll", "d", "s"), "who": ("re", "ve", "ll", "d", "s"),
    "why": ("re", "ve", "ll", "d", "s"), "how": ("re", "ve", "ll", "d", "s"),
}
# spelled-without-apostrophe forms that are also ordinary words are not split
_NO_APOSTROPHE_KEEP = {"its", "ill", "well", "were", "hell", "shell", "shed", "lets", "whore"}
_ABBREVIATIONS = (
    "Mr. Mrs. Ms. Dr. Prof. Jr. St. Mt. Inc. Ltd. Co. co. Corp. Bros. Gen. Gov. Sen. Rep. Rev. Adm. Messrs. "
    "Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. "
    "Ak. Ala. Ariz. Ark. Calif. Colo. Conn. Del. Fla. Ga. Ia. Id. Ill. Ind. Kan. Kans. Ky. La. Mass. Md. Mich. "
    "Minn. Miss. Mo. Mont. Neb. Nebr. Nev. Okla. Ore. Pa. Tenn. Va. Wash. Wis. "
    "D.C. N.Y. N.C. N.D. N.H. N.J. N.M. S.C. Ph.D. e.g. E.g. E.G. i.e. I.e. I.E. a.m. p.m. vs. v.s. "
    "ä. ö. ü."
).split() + [f"{c}." for c in "abcdefghijklmnopqrstuvwxyz"]
_EMOTICONS = (
    ":) :-) :)) :-)) (: (-: =) (= :] :-] [: [-: :o) (o: :} :-} 8) 8-) ;) ;-) (; :( :-( :(( ): )-: =( >:( "
    ":') :'( :/ :-/ =/ =| :| :-| :P :-P :p :-p :O :-O :o :-o :0 :-0 :() >:o :* :-* :3 :-3 =3 :> :-> :X :-X :x "
    ":-x :D :-D ;D ;-D =D xD XD xDD XDD 8D 8-D <3 </3 <33 ^_^ ^__^ -_- o_o O_O o_O O_o o.O O.o o.o 0_0 C++ "
    "and/or w/o ' '' ’ ’’ — 'em 'cause 'cos 'bout 'nuff ’em ’cause o'clock ma'am 's 'S ’s ’S ‘s ‘S"
).split()


def _cased(word: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((word, word[:1].upper() + word[1:])))


def _exception_table() -> dict[str, list[str]]:
    """Chunk → its tokens, for chunks the affix rules alone would tokenize differently."""
    table: dict[str, list[str]] = {}
    for stem in _NT_STEMS:
        for s in _cased(stem):
            for apostrophe in ("'", "’"):
                table[f"{s}n{apostrophe}t"] = [s, f"n{apostrophe}t"]
            if f"{stem}nt" not in _NO_APOSTROPHE_KEEP:
                table[f"{s}nt"] = [s, "nt"]
    for modal in ("could", "might", "must", "should", "would"):
        for s in _cased(modal):
            table[f"{s}'ve"], table[f"{s}’ve"], table[f"{s}ve"] = [s, "'ve"], [s, "’ve"], [s, "ve"]
    for pronoun, clitics in _PRONOUN_CLITICS.items():
        for s, clitic in itertools.product(_cased(pronoun), clitics):
            for apostrophe in ("'", "’"):
                if clitic != "s":  # 's is a generic suffix
                    table[f"{s}{apostrophe}{clitic}"] = [s, f"{apostrophe}{clitic}"]
            bare = f"{s}{clitic}"
            if bare.lower() not in _NO_APOSTROPHE_KEEP:
                table[bare] = [s, clitic]
    for word, (head, tail) in (("cannot", ("can", "not")), ("gonna", ("gon", "na")), ("gotta", ("got", "ta"))):
        for s in _cased(word):
            table[s] = [s[: len(head)], tail]
    for hour in range(1, 13):
        for suffix in ("am", "pm", "a.m.", "p.m."):
            table[f"{hour}{suffix}"] = [str(hour), suffix]
    for item in _ABBREVIATIONS + _EMOTICONS + ["8)"]:
        table[item] = [item]
    return table


EXCEPTIONS: dict[str, list[str]] = _exception_table()
_EXCEPTION_FRAME = pl.DataFrame(
    {"key": list(EXCEPTIONS), "exc": list(EXCEPTIONS.values())},
    schema={"key": pl.String, "exc": pl.List(pl.String)},
)


def _split_core(core: pl.Expr) -> pl.Expr:
    """A core (chunk without affixes) → its tokens, splitting at infixes."""
    spaced = core.str.replace_all(r"\.\.+|…", " $0 ").str.replace_all(SYMBOLS, " $0 ")
    # a leading abbreviation before a capital stays one token ("z.B." → "z." "B.", "St.Gallen")
    spaced = spaced.str.replace(r"^((?:[a-zäöü]|St)\.)(\p{Lu})", "$1 $2")
    for pattern in _INFIXES:
        for _ in range(2):  # the second pass catches a split point the first pass consumed as context
            spaced = spaced.str.replace_all(pattern, "${a} ${x} ${b}")
    return spaced.str.split(" ").list.eval(pl.element().filter(pl.element() != ""))


def chunk_tokens(vocab: pl.DataFrame, *, column: str = "chunk") -> pl.DataFrame:
    """Add `tokens` (list of str) to a frame of distinct whitespace-free chunks (other columns kept).

    Plain words and numbers (most of a vocabulary) take a fast path; the rest go through
    the exception table, affix splitting and infix splitting.
    """
    plain = pl.col(column).str.contains(r"^(?:\p{L}+|[0-9]+)$") & ~pl.col(column).is_in(_EXCEPTION_FRAME["key"])
    fast = vocab.filter(plain).with_columns(tokens=pl.concat_list(pl.col(column)))
    slow = _affix_tokens(vocab.filter(~plain), column=column)
    return pl.concat([fast, slow], how="vertical")


def _affix_tokens(vocab: pl.DataFrame, *, column: str) -> pl.DataFrame:
    columns = vocab.columns
    frame = vocab.join(_EXCEPTION_FRAME.rename({"key": column, "exc": "_whole"}), on=column, how="left",
                       maintain_order="left")
    parts = pl.col(column).str.extract_groups(_AFFIX_SPLIT)
    frame = frame.with_columns(
        _pre=parts.struct.field("pre"), _core=parts.struct.field("core"), _suf=parts.struct.field("suf"))
    # "+" is a prefix only when no digit follows ("+5" stays whole)
    plus_number = pl.col("_pre").str.ends_with("+") & pl.col("_core").str.contains("^[0-9]")
    # "8)" is an emoticon in spaCy's exception table, so "(8)" tokenizes as "(" "8)"
    eight = (pl.col("_core") == "8") & pl.col("_suf").str.starts_with(")")
    frame = frame.with_columns(
        _pre=pl.when(plus_number).then(pl.col("_pre").str.slice(0, pl.col("_pre").str.len_chars() - 1))
        .otherwise(pl.col("_pre")),
        _core=pl.when(plus_number).then("+" + pl.col("_core")).when(eight).then(pl.lit("8)"))
        .otherwise(pl.col("_core")),
        _suf=pl.when(eight).then(pl.col("_suf").str.slice(1)).otherwise(pl.col("_suf")),
    )
    # exception on the stripped core, before and after splitting off a final "."
    frame = frame.join(_EXCEPTION_FRAME.rename({"key": "_core", "exc": "_core_exc"}), on="_core", how="left",
                       maintain_order="left")
    move_dot = (pl.col("_core_exc").is_null() & pl.col("_core").str.contains(_DOT_SUFFIX)
                & (pl.col("_core").str.len_chars() > 1))
    frame = frame.with_columns(
        _core=pl.when(move_dot).then(pl.col("_core").str.slice(0, pl.col("_core").str.len_chars() - 1))
        .otherwise(pl.col("_core")),
        _suf=pl.when(move_dot).then("." + pl.col("_suf")).otherwise(pl.col("_suf")),
    )
    frame = frame.join(_EXCEPTION_FRAME.rename({"key": "_core", "exc": "_dot_exc"}), on="_core", how="left",
                       maintain_order="left")
    unit = pl.col("_core").str.extract_groups(_UNIT_SPLIT)
    core_tokens = (
        pl.when(pl.col("_core_exc").is_not_null()).then(pl.col("_core_exc"))
        .when(pl.col("_dot_exc").is_not_null()).then(pl.col("_dot_exc"))
        .when(pl.col("_core") == "").then(pl.lit([], dtype=pl.List(pl.String)))
        .when(unit.struct.field("unit").is_not_null())
        .then(pl.concat_list(unit.struct.field("num"), unit.struct.field("unit")))
        .when(~pl.col("_core").str.contains(_INFIX_CANDIDATE) | pl.col("_core").str.contains(_URL))
        .then(pl.concat_list(pl.col("_core")))
        .otherwise(_split_core(pl.col("_core")))
    )
    tokens = pl.concat_list(
        pl.col("_pre").str.extract_all(_PREFIX_TOKEN), core_tokens, pl.col("_suf").str.extract_all(_SUFFIX_TOKEN))
    return frame.select(
        *columns,
        tokens=pl.when(pl.col("_whole").is_not_null()).then(pl.col("_whole")).otherwise(tokens),
    )


def word_tokens(frame: pl.DataFrame, *, text: str = "text", key: str = "row",
                features: Mapping[str, pl.Expr] | None = None) -> pl.DataFrame:
    """One row per word token in text order: `key` and, per feature, a column.

    `features` are expressions over `pl.col("token")` (the token string); they are evaluated
    once per distinct token of the batch and gathered to the occurrences, so numeric features
    cost no string copies. Without `features` the column is the token itself.
    """
    features = dict(features) if features else {"token": pl.col("token")}
    chunks = (frame.select(pl.col(key), pl.col(text).fill_null("").str.extract_all(r"\S+").alias("chunk"))
              .explode("chunk").drop_nulls("chunk").with_columns(_h=pl.col("chunk").hash()))
    # each distinct chunk once: its tokens go to one flat table, the chunk keeps (start, count) into it
    vocab = chunk_tokens(chunks.select("chunk", "_h").unique(subset="_h", keep="any")).select(
        "_h", "tokens", _count=pl.col("tokens").list.len().cast(pl.Int64))
    vocab = vocab.with_columns(_start=pl.col("_count").cum_sum() - pl.col("_count"))
    flat = vocab.select(pl.col("tokens").alias("token")).explode("token").select(**features)
    occurrences = chunks.select(key, "_h").join(vocab.select("_h", "_start", "_count"), on="_h", how="left",
                                                maintain_order="left")
    index = occurrences.select(
        pl.col(key), _i=pl.int_ranges(pl.col("_start"), pl.col("_start") + pl.col("_count"))).explode("_i")
    return pl.concat([index.select(key), flat[index["_i"]]], how="horizontal")
