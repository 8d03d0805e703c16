"""Character-set repairs of feed text: broken UTF-8 bytes, and mojibake in decoded text.

Two different accidents, two repairs:

* A feed that is UTF-8 but holds one invalid byte makes feedparser give up on UTF-8 and decode
  the whole document with a fallback (iso-8859-2), garbling every non-ASCII character.
  `utf8_body` replaces just the invalid bytes (U+FFFD) so that the rest stays right.
* A publisher's CMS that once decoded UTF-8 as windows-1252 ("Lâ€™Oreal") ships mojibake in
  well-formed feeds. `repair_mojibake` undoes such double encoding with ftfy, and nothing else
  (no quote uncurling, no normalization): "naïve" and Indonesian text stay as they are.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping

import ftfy

_UTF8_NAMES = {"utf-8", "utf8"}
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_XML_DECLARATION = re.compile(
    rb"""^\s*<\?xml\s[^>]{0,200}?\bencoding\s*=\s*["']([A-Za-z0-9._:-]{1,40})["']"""
)
_HTTP_CHARSET = re.compile(r"""(?i)\bcharset\s*=\s*["']?([A-Za-z0-9._:-]{1,40})""")


def declared_encodings(body: bytes, headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(HTTP `charset=`, XML declaration's `encoding=`) of a feed, lower-cased; None where absent."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    http = _HTTP_CHARSET.search(content_type)
    head = body[:512].removeprefix(codecs.BOM_UTF8)
    xml = _XML_DECLARATION.match(head)
    return (http.group(1).lower() if http else None, xml.group(1).decode("ascii").lower() if xml else None)


def utf8_body(body: bytes, headers: Mapping[str, str]) -> bytes:
    """`body` as valid UTF-8 when UTF-8 is what it declares (or defaults to); else unchanged.

    Invalid sequences become U+FFFD. Only feeds that mostly are UTF-8 are repaired: a feed
    with at least as many invalid sequences as valid multi-byte characters is in a single-byte
    charset that nobody declared (Latin-1 without a declaration, say), and feedparser's own
    fallback decodes that better than a page of U+FFFD would.
    """
    if body.isascii() or body.startswith(_WIDE_BOMS):
        return body
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        pass
    http, xml = declared_encodings(body, headers)
    if any(name is not None and name not in _UTF8_NAMES for name in (http, xml)):
        return body  # another charset is declared: feedparser honours it
    text = body.decode("utf-8", "replace")
    invalid = text.count("\ufffd") - body.count("\ufffd".encode())
    multibyte = len(text) - len(text.encode("ascii", "ignore")) - invalid
    if multibyte < invalid:
        return body
    return text.encode("utf-8")


def repair_mojibake(text: str) -> str:
    """`text` with double-encoded UTF-8 ("Lâ€™Oreal" -> "L’Oreal") decoded; other text as is."""
    if text.isascii():  # most text: no mojibake is possible, and this costs nothing
        return text
    return ftfy.fix_encoding(text)  # only the encoding steps of ftfy.fix_text
