"""The phrase rules (β-CLIP style): pure functions from one parsed sentence to candidate phrases.

Three kinds, each read off the dependency parse:

- ``noun_chunk``: spaCy's noun chunks ("a large red circle") that name a thing.
- ``spatial``: a preposition with its object's whole subtree ("to the left of a medium green
  triangle"), starting at an adverb it completes ("next to the tree").
- ``relation``: a verb (with its auxiliaries) directly followed by one of its prepositional
  phrases ("is placed above a small blue square").

Within a kind, overlapping spans keep the longest (then the earliest); across kinds spans
nest on purpose, since they are the caption's hierarchy at different granularities.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from spacy.tokens import Span, Token
from spacy.util import filter_spans

from pipeline.text.config import TextConfig
from pipeline.text.lexeme import Lexeme, lexeme_of

_NOUNS = frozenset({"NOUN", "PROPN"})
_VERBS = frozenset({"VERB", "AUX"})
_VERB_GROUP_DEPS = frozenset({"aux", "auxpass", "neg", "advmod"})  # "can also be seen"
_GAP_DEPS = frozenset({"advmod", "neg"})  # "is directly above", "is not above"
_COMPLETED_POS = frozenset({"ADV", "ADJ"})  # "next to", "close to"
_OUTSIDE_NP_DEPS = frozenset({"advmod", "cc"})
_COMPLEMENT_PREPS = frozenset({"of"})  # "of X" completes a noun ("the left of X"); never on its own


@dataclass(frozen=True)
class Candidate:
    span: Span
    kind: str
    lexeme: Lexeme | None  # only noun chunks name something a box can show


def candidates(sent: Span, cfg: TextConfig, noun_chunks: Iterable[Span] | None = None) -> list[Candidate]:
    """All non-trivial phrases of one sentence, overlaps resolved within each kind.
    ``noun_chunks``: the sentence's, when the caller has them (None: ``sent.noun_chunks``, which
    spaCy finds by running over the whole document: once per sentence, a third of a worker's
    time on long captions)."""
    found = sent.noun_chunks if noun_chunks is None else noun_chunks
    chunks = [_chunk(c) for c in found if names_a_thing(c.root, cfg)]
    preps = [p for p in sent if _is_phrase_prep(p, cfg)]
    relations = [span for p in preps if (span := _relation(p)) is not None]
    spatial = [_trim(sent.doc[_pp_start(p) : p.right_edge.i + 1]) for p in preps]
    return (
        [Candidate(c, "noun_chunk", lexeme_of(c.root)) for c in filter_spans(chunks)]
        + [Candidate(s, "relation", None) for s in filter_spans(relations)]
        + [Candidate(s, "spatial", None) for s in filter_spans(spatial)]
    )


def names_a_thing(root: Token, cfg: TextConfig) -> bool:
    """Not a pronoun or bare determiner, not the picture itself, not a place in it."""
    lemma = root.lemma_.lower()
    return root.pos_ in _NOUNS and lemma not in cfg.frame_nouns and lemma not in cfg.location_nouns


def _chunk(chunk: Span) -> Span:
    """The noun chunk from its first word that belongs to the noun phrase: spaCy lets a
    sentence adverb or conjunction in front ("Then a red circle", "and the cat")."""
    root, doc = chunk.root, chunk.doc
    start = chunk.start
    while start < root.i and (
        doc[start].is_punct
        or doc[start].is_space
        or (doc[start].head == root and doc[start].dep_ in _OUTSIDE_NP_DEPS)
    ):
        start += 1
    return doc[start : chunk.end]


def _is_phrase_prep(token: Token, cfg: TextConfig) -> bool:
    """A preposition with a noun object that is neither a pronoun nor the picture ("in this image")."""
    if token.dep_ != "prep" or token.lower_ in _COMPLEMENT_PREPS:
        return False
    obj = next((c for c in token.children if c.dep_ == "pobj"), None)
    return obj is not None and obj.pos_ in _NOUNS and obj.lemma_.lower() not in cfg.frame_nouns


def _pp_start(prep: Token) -> int:
    """Where a prepositional phrase starts: at the preposition, or at the word it completes
    when that word comes right before it ("next to", "close to")."""
    head = prep.head
    return head.i if head.i == prep.i - 1 and head.pos_ in _COMPLETED_POS else prep.i


def _relation(prep: Token) -> Span | None:
    """Verb group + prepositional phrase, when the phrase follows the verb with at most adverbs
    between; the verb group takes the auxiliaries before the verb but no leading adverb."""
    start = _pp_start(prep)
    verb = prep.head if start == prep.i else prep.head.head
    if verb.pos_ not in _VERBS or verb.i >= start:
        return None
    doc = prep.doc
    if any(doc[i].dep_ not in _GAP_DEPS for i in range(verb.i + 1, start)):
        return None
    first = verb.i
    while first > 0 and doc[first - 1].head == verb and doc[first - 1].dep_ in _VERB_GROUP_DEPS:
        first -= 1
    while doc[first].dep_ == "advmod" and first < verb.i:
        first += 1
    return _trim(doc[first : prep.right_edge.i + 1])


def _trim(span: Span) -> Span:
    """The span without trailing punctuation and whitespace (its first token is a word)."""
    end = span.end
    while end > span.start + 1 and (span.doc[end - 1].is_punct or span.doc[end - 1].is_space):
        end -= 1
    return span.doc[span.start : end]
