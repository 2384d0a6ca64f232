"""Caption → kept sentences and phrases (schema v1 offsets), from one parsed Doc."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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

    def to_json(self) -> dict[str, Any]:
        return {
            "sentences": self.sentences,
            "phrases": [asdict(p) for p in self.phrases],
            "lexemes": [lex.to_json() if lex else None for lex in self.lexemes],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TextHierarchy:
        return cls(
            list(d["sentences"]),
            [Phrase(**p) for p in d["phrases"]],
            [Lexeme.from_json(lex) if lex else None for lex in d["lexemes"]],
        )


def build_hierarchy(doc: Doc, cfg: TextConfig) -> TextHierarchy:
    """Sentences are capped first; phrases come from kept sentences only, in reading order,
    the first of case-insensitively equal texts wins, then the phrase cap applies."""
    sents = [s for s in doc.sents if s.text.strip()][: cfg.max_sentences]
    found = sorted(
        ((i, c) for i, s in enumerate(sents) for c in candidates(s, cfg)),
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
