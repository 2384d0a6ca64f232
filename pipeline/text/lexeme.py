"""Lexemes: what a noun phrase names (head lemma) and how it qualifies it (modifier lemmas).

Grounding compares the lexeme of a caption phrase with the lexemes of annotation labels;
both come from the same spaCy model, so "circles" in a caption and "circle" in a label meet.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spacy.tokens import Doc, Token

# Attributes of the thing itself. Counts ("two circles") are not: they say how many boxes
# a phrase covers, not what any one of them looks like.
_MODIFIER_DEPS = frozenset({"amod", "compound"})


@dataclass(frozen=True)
class Lexeme:
    head: str  # lowercased lemma of the head noun; "" when there is none
    modifiers: tuple[str, ...] = ()  # lowercased lemmas of its attributes, in text order


def lexeme_of(head: Token) -> Lexeme:
    """The lexeme of the noun phrase headed by ``head``: "a large red circle" → circle (large, red)."""
    modifiers = dict.fromkeys(_lemma(t) for t in head.lefts if t.dep_ in _MODIFIER_DEPS)
    return Lexeme(_lemma(head), tuple(m for m in modifiers if m))


def label_lexeme(doc: Doc) -> Lexeme:
    """The lexeme of an annotation label ("large red circle", "traffic lights").

    Labels are noun phrases by convention: the first noun chunk's head; a label spaCy finds
    no noun in (a lone adjective, a verb) falls back to its syntactic root.
    """
    chunk = next(iter(doc.noun_chunks), None)
    if chunk is not None:
        return lexeme_of(chunk.root)
    root = next((s.root for s in doc.sents), None)
    return lexeme_of(root) if root is not None else Lexeme("")


def _lemma(token: Token) -> str:
    """Lowercased, without invisible format characters (a zero-width space glued to "dog")."""
    return "".join(c for c in token.lemma_.lower() if unicodedata.category(c) != "Cf").strip()
