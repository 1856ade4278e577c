"""PII patterns (e-mail addresses, IPv4 addresses, phone numbers): counts, and redaction of kept text.

The patterns are deliberately conservative regular expressions (Rust regex syntax, no
look-around): an e-mail needs a dotted domain with a 2+ letter TLD; an IPv4 address four
dot-separated octets 0-255; a phone number either an international "+CC ..." number with
at least seven more digits in groups, or a North American number with "." or "-"
separators or an area code in brackets. Numbers without a separator structure (years,
prices, IDs) are not phone numbers.
"""

from __future__ import annotations

import polars as pl

EMAIL = r"[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}"
_B = r"(?-u:\b)"  # ASCII word boundary: as exact for digits, and keeps the regex on the fast DFA engine
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = rf"{_B}{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}{_B}"
PHONE = (
    rf"\+[1-9][0-9]{{0,2}}[ .\-]?(?:\(0?[0-9]{{1,4}}\)[ .\-]?)?[0-9]{{1,4}}(?:[ .\-]?[0-9]{{2,4}}){{2,4}}{_B}"
    rf"|\([0-9]{{3}}\)[ .\-]?[0-9]{{3}}[ .\-][0-9]{{4}}{_B}"
    rf"|{_B}[0-9]{{3}}[.\-][0-9]{{3}}[.\-][0-9]{{4}}{_B}"
)
PATTERNS: dict[str, str] = {"emails": EMAIL, "ipv4": IPV4, "phones": PHONE}


def pii_counts(text: pl.Expr) -> dict[str, pl.Expr]:
    """pii_emails, pii_ipv4, pii_phones: matches in the text (e-mails first, then IPs, then phones,
    so one string is counted once)."""
    without_emails = text.str.replace_all(EMAIL, " ")
    without_ips = without_emails.str.replace_all(IPV4, " ")
    return {
        "pii_emails": text.str.count_matches(EMAIL).cast(pl.Int64),
        "pii_ipv4": without_emails.str.count_matches(IPV4).cast(pl.Int64),
        "pii_phones": without_ips.str.count_matches(PHONE).cast(pl.Int64),
    }


def redacted(text: pl.Expr, *, email: str, ip: str, phone: str) -> pl.Expr:
    """Text with every e-mail, IPv4 address and phone number replaced by its placeholder."""
    def plain(placeholder: str) -> str:  # "$" would name a capture group
        return placeholder.replace("$", "$$")

    return (text.str.replace_all(EMAIL, plain(email)).str.replace_all(IPV4, plain(ip))
            .str.replace_all(PHONE, plain(phone)))
