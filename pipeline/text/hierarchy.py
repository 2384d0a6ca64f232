"""Caption → kept sentences and phrases (schema v1 offsets), from one parsed Doc."""

from __future__ import annotations

from dataclasses import dataclass

from spacy.tokens import Doc

from pipeline.schema import PHRASE_KINDS, Phrase
from pipeline.text.config import TextConfig
from pipeline.text.lexeme import Lexeme
from pipeline.text.phrases import candidates


@dataclass(frozen=True)
class TextHierarchy:
    sentences: list[str]
    phrases: list[Phrase]  # region=None; grounding links them
    lexemes: list[Lexeme | None]  # parallel to phrases; None: nothing a box could show


def build_hierarchy(doc: Doc, cfg: TextConfig) -> TextHierarchy:
    """Sentences are capped first; phrases come from kept sentences only, in reading order,
    the first of case-insensitively equal texts wins, then the phrase cap applies."""
    sents = [s for s in doc.sents if s.text.strip()][: cfg.max_sentences]
    chunks = list(doc.noun_chunks)  # once for the doc: each sentence takes those inside it
    found = sorted(
        (
            (i, c)
            for i, s in enumerate(sents)
            for c in candidates(s, cfg, [n for n in chunks if n.start >= s.start and n.end <= s.end])
        ),
        key=lambda ic: (ic[1].span.start_char, -ic[1].span.end_char, PHRASE_KINDS.index(ic[1].kind)),
    )
    seen: set[str] = set()
    phrases, lexemes = [], []
    for i, c in found:
        key = " ".join(c.span.text.lower().split())
        if key in seen:
            continue
        seen.add(key)
        phrases.append(Phrase(c.span.text, i, c.span.start_char, c.span.end_char, c.kind))
        lexemes.append(c.lexeme)
    n = cfg.max_phrases
    return TextHierarchy([s.text.strip() for s in sents], phrases[:n], lexemes[:n])
