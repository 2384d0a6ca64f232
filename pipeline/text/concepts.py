"""β-CLIP's text handling that needs no spaCy: its caption cleaning, and a read's phrases
rebuilt from the phrases data prep wrote per sentence.

The official loader extracts phrases from the sentences a read picks, joined; data prep cannot
know the pick, so it writes each sentence's (``bclip_rules.py``) and the training loader calls
:func:`select`. The training loader imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from itertools import groupby
from typing import TypeVar

from pipeline.schema import PHRASE_KINDS, Phrase
from pipeline.text.config import BCLIP_MAX_PHRASES

T = TypeVar("T")


def concept_key(kind: str, text: str) -> str:
    """The string the official code compares: a spatial phrase is its words lowercased."""
    text = text.replace("\n", " ")
    return " ".join(text.lower().split()) if kind == "spatial" else text.strip()


def first_of_each(concepts: Iterable[T], kind_and_text: Callable[[T], tuple[str, str]]) -> list[T]:
    """The concepts whose :func:`concept_key` has not come before, in order: the official
    dedup (datasets.py 471–476), shared by the port and by :func:`select` so they cannot differ."""
    seen: set[str] = set()
    kept = []
    for concept in concepts:
        key = concept_key(*kind_and_text(concept))
        if key not in seen:
            seen.add(key)
            kept.append(concept)
    return kept


def select(phrases: Sequence[Phrase], picked: Sequence[int], cap: int = BCLIP_MAX_PHRASES) -> list[Phrase]:
    """The phrases the official code trains on when a read picks sentences ``picked`` (indices,
    in the order it joins them): ``concepts_minimal`` of the joined text, cut at ``cap``
    (``--max-concepts 30``, main_clip_ft.py 249–250). Kind by kind, picked sentence by picked
    sentence, the first of equal strings: equal to one pass over the joined text, because each
    sentence's list is already in that order and its duplicates are later ones there too."""
    ordered = [
        p for kind in PHRASE_KINDS for s in picked for p in phrases if p.sentence == s and p.kind == kind
    ]
    return first_of_each(ordered, lambda p: (p.kind, p.text))[:cap]


def clean_caption(caption: str) -> str:
    """``caption.replace("\\n", " ")``, then ``deduplicate_sentence_fast`` (datasets.py 37–70):
    on text over 100 characters, a substring of 10, 5, then 3 to 20 characters repeated three
    or more times in a row is kept once (at most 10 such repeats each); then words repeated in
    a row are kept once, and the text is stripped."""
    text = caption.replace("\n", " ")
    if not text or len(text) < 2:
        return text
    if len(text) > 100:
        for min_len in (10, 5, 3):
            text = re.sub(rf"(.{{{min_len},20}}?)\1\1+", r"\1", text, count=10)
    words = text.split()
    if len(words) >= 2:
        text = " ".join(word for word, _ in groupby(words))
    return text.strip()
