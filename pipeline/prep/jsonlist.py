"""The items of a file holding one JSON list, streamed: ShareGPT4V's caption files and Visual
Genome's region descriptions are single lists of about a gigabyte, which ``json.load`` would
turn into several gigabytes of Python objects before the first record.

Items are decoded one at a time with ``json.JSONDecoder.raw_decode`` over a buffer refilled
from the stream, so memory holds one read chunk plus the current item. Bytes that are not
UTF-8 are kept as lone surrogates (``surrogateescape``) so that one bad byte spoils one item,
not the file: a reader finds them with ``records.is_text`` and drops that item.
"""

from __future__ import annotations

import codecs
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from pipeline import storage
from pipeline.config import BadInput
from pipeline.prep.records import Drop, huge_int
from pipeline.text import encoding

CHUNK = 1 << 20
_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"
_NUMBER = frozenset("0123456789.eE+-")


class BrokenList(ValueError):
    """The list cannot be read on from here: ``reason`` is ``json_truncated`` or ``json_corrupt``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def read_json_list(url: str, key: str) -> Iterator[Any | Drop]:
    """Every item of the list in ``url``; a list cut short or corrupt ends with one :class:`Drop`
    (no id, the next ordinal) after the items before the break. A file that is no JSON list at
    all is a wrong ``input.<key>`` and raises."""
    with storage.open_stream(url) as f:
        head = f.read(CHUNK)
        encoding.refuse_wide(head, f"input.{key}: {url}")
        ordinal = 0
        try:
            for item in parse_json_list(itertools.chain([head], iter(lambda: f.read(CHUNK), b""))):
                if type(item) is Unreadable:
                    item = Drop(ordinal, None, "unparseable_record", item.detail)
                yield item
                ordinal += 1
        except BrokenList as e:
            yield Drop(ordinal, None, e.reason, f"{e.detail}; the items before it are kept")
        except ValueError as e:
            raise BadInput(f"input.{key}: {url}: {e}") from e


def parse_json_list(chunks: Iterable[bytes]) -> Iterator[Any]:
    """The items of a JSON list arriving as byte chunks, each decoded once it is whole."""
    chunks = iter(chunks)
    utf8 = codecs.getincrementaldecoder("utf-8-sig")("surrogateescape")  # a leading BOM is not JSON
    buf, pos, eof, consumed = "", 0, False, 0  # consumed: characters dropped from buf's front

    def more() -> bool:
        nonlocal buf, pos, eof, consumed
        if eof:
            return False
        chunk = next(chunks, None)
        eof = chunk is None
        consumed += pos
        buf, pos = buf[pos:] + utf8.decode(chunk or b"", final=eof), 0
        return True

    def next_char() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in _SPACE:
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    if next_char() != "[":
        raise ValueError("not a JSON list")
    pos += 1
    if next_char() == "]":
        return
    while True:
        if not next_char():
            raise BrokenList("json_truncated", f"character {consumed + pos}: the file ends inside the list")
        while True:
            try:
                item, end = _decode(buf, pos)
            except _ItemGoesOn:
                if more():
                    continue
                detail = f"character {consumed + pos}: the file ends inside an item"
                raise BrokenList("json_truncated", detail) from None
            except json.JSONDecodeError as e:
                if _cut_short(e, buf, 6) and more():
                    continue  # the item goes on in the next chunk
                reason = "json_truncated" if _cut_short(e, buf, 0) else "json_corrupt"
                raise BrokenList(reason, f"character {consumed + e.pos}: {e.msg}") from None
            if not _may_go_on(item, buf, end) or not more():
                break
        pos = end
        yield item
        sep = next_char()
        if sep == "]":
            return
        if sep != ",":
            reason = "json_truncated" if not sep else "json_corrupt"
            raise BrokenList(reason, f"character {consumed + pos}: expected ',' or ']' after an item")
        pos += 1


class Unreadable(NamedTuple):
    """An item that is JSON but not one Python's parser reads (nested deeper than it goes)."""

    detail: str


class _ItemGoesOn(Exception):
    """The buffer ends inside an item being skipped."""


_TOLERANT = json.JSONDecoder(parse_int=huge_int)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|"|[\[\]{}]', re.DOTALL)


def _decode(buf: str, pos: int) -> tuple[Any, int]:
    """The item at ``pos`` and where it ends: an integer too long for Python is read as ±inf
    (``records.huge_int``), an item nested too deep is skipped whole as :class:`Unreadable`."""
    try:
        try:
            return _DECODER.raw_decode(buf, pos)
        except json.JSONDecodeError:
            raise
        except ValueError:  # an integer of over 4,300 digits
            return _TOLERANT.raw_decode(buf, pos)
    except RecursionError:
        return Unreadable("nested deeper than the JSON parser goes"), _skip(buf, pos)


def _skip(buf: str, pos: int) -> int:
    """The end of the array or object at ``pos``, by its brackets outside strings."""
    depth = 0
    for token in _TOKEN.finditer(buf, pos):
        text = token.group()
        if text == '"':  # a string the buffer ends inside
            break
        if text in "[{":
            depth += 1
        elif text in "]}":
            depth -= 1
        if depth == 0:
            return token.end()
    raise _ItemGoesOn


def _cut_short(e: json.JSONDecodeError, buf: str, slack: int) -> bool:
    """Whether a decoding error is the buffer's end rather than bad JSON: a string ran into the
    end, or the error is within ``slack`` characters of it (6 while more may come: a ``\\uXXXX``
    escape cut short is an error at its start)."""
    return e.pos >= len(buf) - slack or e.msg.startswith("Unterminated string")


def _may_go_on(item: Any, buf: str, end: int) -> bool:
    """Whether a number may continue past the buffer ("12" of "12.5"); every other item ends in a
    delimiter of its own."""
    is_number = isinstance(item, (int, float)) and not isinstance(item, bool)
    return is_number and all(c in _NUMBER for c in buf[end:])
