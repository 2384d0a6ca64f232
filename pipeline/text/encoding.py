"""A text file's encoding, read off its byte-order mark: files from Windows tools start with one
(Notepad's UTF-8 with BOM; PowerShell's ``Out-File`` and ``>`` wrote UTF-16 until PowerShell 6).
A file without one is UTF-8, as JSON (RFC 8259) requires of files exchanged between systems."""

from __future__ import annotations

import codecs

from pipeline.config import BadInput

# Longest first: UTF-32-LE's mark begins with UTF-16-LE's.
_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF32_BE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF8, "UTF-8", "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "UTF-16", "utf-16"),
    (codecs.BOM_UTF16_BE, "UTF-16", "utf-16"),
)


def decode(data: bytes, errors: str = "strict") -> str:
    """A whole file's text, in the encoding its byte-order mark declares (UTF-8 without one)."""
    return data.decode(next((name for mark, _, name in _MARKS if data.startswith(mark)), "utf-8"), errors)


def refuse_wide(head: bytes, what: str) -> None:
    """Raise :class:`BadInput` naming ``what`` when ``head`` starts with a UTF-16 or UTF-32
    byte-order mark: a line- or chunk-wise UTF-8 reader cannot read the file, the user can convert it."""
    label = next((label for mark, label, _ in _MARKS if head.startswith(mark)), "UTF-8")
    if label != "UTF-8":
        raise BadInput(
            f"{what} is {label} (its byte-order mark); convert it to UTF-8 (iconv -f {label} -t UTF-8)"
        )
