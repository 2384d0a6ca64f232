"""β-CLIP's phrase rules (``text.rules: bclip``): the phrases its official code trains on.

A port of ``spacy_concepts_extractor.concepts_minimal`` from β-CLIP's ``datasets.py``
(github.com/fzohra/B-CLIP, lines 387–477) and of the sentence split before it (568, 576).
The official loader joins a random pick of 5 sentences with ". " on every read and extracts
phrases from that text, so data prep, which cannot know the pick, writes each sentence's
phrases; ``pipeline.text.concepts.select`` rebuilds the official list for any pick from them. Each sentence is
parsed with the full stop it has in the joined text: spaCy still sees it without its
neighbours, so a tag near the sentence's edge can differ from the official parse.

Kinds: noun phrases are ``noun_chunk``, VERB+ADP actions ("made of") ``relation``, the
spatial prepositions ("to the left of") ``spatial``: the official order is PHRASE_KINDS'.
The official cap of 30 CLIP tokens per phrase (main_clip_ft.py 269) cuts token ids, not text:
it belongs to tokenizing, and phrases are written whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from spacy.language import Language
from spacy.matcher import Matcher
from spacy.tokens import Doc, Span
from spacy.util import filter_spans

from pipeline.schema import Phrase
from pipeline.text.concepts import concept_key, first_of_each
from pipeline.text.config import BCLIP_MAX_PHRASES, TextConfig
from pipeline.text.hierarchy import TextHierarchy
from pipeline.text.lexeme import Lexeme, lexeme_of
from pipeline.text.phrases import names_a_thing

# datasets.py 396–400: a noun phrase that goes on to a side ("a cat on the left of").
NP_SIDE = [
    {"POS": "DET", "OP": "?"},
    {"POS": {"IN": ["ADJ", "NOUN", "PROPN"]}, "OP": "+"},
    {"POS": "ADP"},
    {"LOWER": "the", "OP": "?"},
    {"LOWER": {"IN": ["left", "right", "top", "bottom", "front", "back", "middle", "center"]}},
    {"LOWER": "of", "OP": "?"},
]
VERB_ADP = [{"POS": "VERB"}, {"POS": "ADP"}]  # datasets.py 392–393: "leaning against"
SPATIAL_HEADS = frozenset(  # datasets.py 404–408
    {
        "left", "right", "top", "bottom", "front", "back", "inside", "outside", "above", "below",
        "under", "over", "middle", "center", "centered", "frontside", "backside", "near", "nearby", "far",
    }
)  # fmt: skip
BLACKLIST = frozenset({"the", "the image", "image"})  # datasets.py 411; compared with case


@dataclass(frozen=True)
class Sentence:
    """A sentence as the official loader has it, and where it lies in the caption."""

    text: str  # newlines as spaces, stripped, without the ". " that ended it
    start: int  # caption offset of text[0]
    stop: int | None  # caption offset of the full stop that ended it; None: the last one

    @property
    def parsed(self) -> str:
        """What is parsed: the text with its full stop, as it reads in the official joined text."""
        return self.text if self.stop is None else self.text + "."

    def caption_offset(self, i: int) -> int:
        """The caption offset of ``parsed[i]`` (``i`` may be ``len(parsed)``)."""
        n = len(self.text)
        return self.start + i if i <= n or self.stop is None else self.stop + i - n


def split_sentences(caption: str) -> list[Sentence]:
    """``[s.strip() for s in caption.replace("\\n", " ").split(". ") if s.strip()]``, with offsets."""
    pieces = caption.replace("\n", " ").split(". ")
    sentences, at = [], 0
    for k, piece in enumerate(pieces):
        if piece.strip():
            start = at + len(piece) - len(piece.lstrip())
            stop = at + len(piece) if k < len(pieces) - 1 else None
            sentences.append(Sentence(piece.strip(), start, stop))
        at += len(piece) + 2
    return sentences


class BclipRules:
    """The official rules on one spaCy pipeline (its matchers hold the pipeline's vocabulary)."""

    def __init__(self, nlp: Language, cfg: TextConfig):
        self.nlp, self.cfg = nlp, cfg
        self.np_side = Matcher(nlp.vocab)
        self.np_side.add("NP_SIDE", [NP_SIDE])
        self.verb_adp = Matcher(nlp.vocab)
        self.verb_adp.add("VERB_ADP", [VERB_ADP])

    def parse(self, captions: list[str]) -> list[TextHierarchy]:
        split = [split_sentences(c)[: self.cfg.max_sentences] for c in captions]
        docs = iter(
            self.nlp.pipe([s.parsed for sents in split for s in sents], batch_size=self.cfg.batch_size)
        )
        return [self._hierarchy(caption, sents, docs) for caption, sents in zip(captions, split)]

    def concepts(self, doc: Doc) -> list[tuple[str, Span]]:
        """``concepts_minimal`` (datasets.py 451–477) as (kind, span): noun phrases, actions,
        spatial relations; the first of equal strings, none blacklisted; the first 30 (a read
        cuts at 30 after this order, main_clip_ft.py 249–250, so it never uses a 31st)."""
        spans = [*doc.noun_chunks, *(doc[s:e] for _, s, e in self.np_side(doc))]
        found = [
            *(("noun_chunk", s) for s in filter_spans(spans)),
            *(("relation", doc[s:e]) for _, s, e in self.verb_adp(doc)),
            *(("spatial", s) for s in spatial_spans(doc)),
        ]
        unique = first_of_each(found, lambda concept: (concept[0], concept[1].text))
        kept = [(kind, span) for kind, span in unique if concept_key(kind, span.text) not in BLACKLIST]
        return kept[:BCLIP_MAX_PHRASES]

    def _hierarchy(self, caption: str, sentences: list[Sentence], docs: Iterator[Doc]) -> TextHierarchy:
        phrases: list[Phrase] = []
        lexemes: list[Lexeme | None] = []
        for i, (sentence, doc) in enumerate(zip(sentences, docs)):
            for kind, span in self.concepts(doc):
                text = span.text
                first = span.start_char + len(text) - len(text.lstrip())
                start = sentence.caption_offset(first)
                end = sentence.caption_offset(first + len(text.strip()))
                phrases.append(Phrase(caption[start:end], i, start, end, kind))
                root = span.root
                lexemes.append(
                    lexeme_of(root) if kind == "noun_chunk" and names_a_thing(root, self.cfg) else None
                )
        n = self.cfg.max_phrases
        return TextHierarchy([s.text for s in sentences], phrases[:n], lexemes[:n])


def spatial_spans(doc: Doc) -> list[Span]:
    """``_spatial_phrases`` (datasets.py 413–449): "next to", and ADP [DET] SPATIAL_HEAD ["of"],
    left to right without overlap (its own deduplication is :meth:`BclipRules.concepts`')."""
    spans, i, n = [], 0, len(doc)
    while i < n:
        t = doc[i]
        if (
            i + 1 < n
            and t.pos_ == "ADV"
            and doc[i + 1].pos_ == "ADP"
            and t.lower_ == "next"
            and doc[i + 1].lower_ == "to"
        ):
            spans.append(doc[i : i + 2])
            i += 2
            continue
        if t.pos_ == "ADP" and i + 1 < n:
            j = i + 2 if doc[i + 1].pos_ == "DET" else i + 1
            if j < n and doc[j].lower_ in SPATIAL_HEADS:
                j += 1
                if j < n and doc[j].pos_ == "ADP" and doc[j].lower_ == "of":
                    j += 1
                spans.append(doc[i:j])
                i = j
                continue
        i += 1
    return spans
