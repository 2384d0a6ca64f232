"""Grounders on hand-made cases: head-lemma + attribute agreement, conflicts, ties (and the
sentence-label tie break), and `none`."""

import pytest

from pipeline.grounding import build_grounder
from pipeline.grounding.base import Annotation, GroundingRequest
from pipeline.grounding.config import GroundingConfig
from pipeline.schema import Phrase, Region
from pipeline.text.config import TextConfig
from pipeline.text.lexeme import Lexeme
from pipeline.text.parser import CaptionParser

BOX = (1.0, 2.0, 30.0, 40.0)


def annotation(label: str, head: str, *modifiers: str, box=BOX) -> Annotation:
    return Annotation(box, label, Lexeme(head, modifiers))


def link(phrase: Lexeme | None, annotations: list[Annotation]) -> tuple[int | None, int]:
    """The region index the phrase links to, and the grounding's ambiguity count."""
    request = GroundingRequest(64, 64, [Phrase("p", 0, 0, 1, "noun_chunk")], [phrase], annotations)
    [grounding] = build_grounder(GroundingConfig("annotations")).ground([request])
    return grounding.phrase_regions[0], grounding.ambiguous


LARGE_RED = annotation("large red circle", "circle", "large", "red")
SMALL_BLUE = annotation("small blue circle", "circle", "small", "blue")
BARE = annotation("circle", "circle")
SQUARE = annotation("red square", "square", "red")


@pytest.mark.parametrize(
    "phrase, annotations, expected",
    [
        (Lexeme("circle", ("red",)), [SQUARE, LARGE_RED], (1, 0)),  # head decides, attributes agree
        (Lexeme("circle", ("large", "red")), [SMALL_BLUE, LARGE_RED], (1, 0)),
        (Lexeme("circle", ("blue",)), [LARGE_RED], (None, 0)),  # conflict: the label says red
        (Lexeme("circle", ("blue",)), [LARGE_RED, BARE], (1, 0)),  # a bare label agrees with anything
        (Lexeme("circle", ("red",)), [BARE, LARGE_RED], (1, 0)),  # most shared attributes wins
        (Lexeme("circle"), [LARGE_RED], (0, 0)),  # "the circle" with one circle in the picture
        (Lexeme("circle"), [LARGE_RED, SMALL_BLUE], (None, 1)),  # which circle? ambiguous
        (
            Lexeme("circle", ("red",)),
            [LARGE_RED, annotation("red circle", "circle", "red")],
            (None, 1),
        ),  # tie
        (Lexeme("triangle", ("red",)), [LARGE_RED, SQUARE], (None, 0)),  # nothing with that head
        (None, [LARGE_RED], (None, 0)),  # relation/spatial phrases are never linked
        (Lexeme(""), [annotation("???", "")], (None, 0)),  # no head, no link
    ],
)
def test_annotation_rule(phrase, annotations, expected):
    assert link(phrase, annotations) == expected


def test_every_annotation_becomes_a_region_and_regions_serve_several_phrases():
    phrases = [
        Phrase("a", 0, 0, 1, "noun_chunk"),
        Phrase("b", 0, 1, 2, "noun_chunk"),
        Phrase("c", 0, 2, 3, "spatial"),
    ]
    lexemes = [Lexeme("circle", ("red",)), Lexeme("circle", ("large",)), None]
    other = annotation("dog", "dog", box=(0.0, 0.0, 5.0, 5.0))
    request = GroundingRequest(64, 64, phrases, lexemes, [other, LARGE_RED])
    [grounding] = build_grounder(GroundingConfig()).ground([request])
    assert grounding.regions == [
        Region((0.0, 0.0, 5.0, 5.0), 1.0, "annotation", "dog"),
        Region(BOX, 1.0, "annotation", "large red circle"),
    ]
    assert grounding.phrase_regions == [1, 1, None]


def test_a_tie_goes_to_the_annotation_labelled_with_the_phrase_sentence():
    """Visual Genome: every region phrase is a sentence, and several may share a head noun."""
    sentences = ["Man wearing a red shirt.", "A man in a hat next to another man.", "A man."]
    phrases = [
        Phrase("Man", 0, 0, 3, "noun_chunk"),
        Phrase("a red shirt", 0, 12, 23, "noun_chunk"),
        Phrase("A man", 1, 25, 30, "noun_chunk"),
        Phrase("another man", 1, 49, 60, "noun_chunk"),
        Phrase("A man", 2, 62, 67, "noun_chunk"),
    ]
    man = Lexeme("man")
    lexemes = [man, Lexeme("shirt", ("red",)), man, man, man]
    annotations = [
        annotation("man wearing a red  shirt", "man"),
        annotation("a man in a hat next to another man", "man"),
        annotation("tall man", "man", "tall"),
    ]
    request = GroundingRequest(64, 64, phrases, lexemes, annotations, None, sentences)
    [grounding] = build_grounder(GroundingConfig()).ground([request])
    # "another man" is not what its sentence's label names (a label's lexeme is its first noun
    # chunk's); "A man." has no label of its own: both stay ambiguous.
    assert grounding.phrase_regions == [0, None, 1, None, None] and grounding.ambiguous == 2


@pytest.fixture(scope="module")
def parser():
    return CaptionParser(TextConfig())


def test_caption_to_boxes_with_plurals_and_ambiguity(parser):
    caption = (
        "Two red circles sit above a small blue square. The blue square is next to a large green "
        "triangle, and a circle is on the left."
    )
    labels = ["red circle", "red circle", "small blue square", "large green triangle"]
    [text] = parser.parse([caption])
    annotations = [
        Annotation((float(i), 0.0, i + 10.0, 10.0), label, lexeme)
        for i, (label, lexeme) in enumerate(zip(labels, parser.lexemes(labels)))
    ]
    request = GroundingRequest(64, 64, text.phrases, text.lexemes, annotations)
    [grounding] = build_grounder(GroundingConfig()).ground([request])
    links = {
        p.text: region for p, region in zip(text.phrases, grounding.phrase_regions) if p.kind == "noun_chunk"
    }
    assert links == {
        "Two red circles": None,  # two boxes labelled "red circle": the plural phrase covers both
        "a small blue square": 2,
        "The blue square": 2,  # "circles"/"square" meet "circle"/"square" through their lemmas
        "a large green triangle": 3,
        "a circle": None,
    }
    assert grounding.ambiguous == 2


def test_none_grounder():
    grounder = build_grounder(GroundingConfig("none"))
    request = GroundingRequest(8, 8, [Phrase("a", 0, 0, 1, "noun_chunk")], [Lexeme("circle")], [LARGE_RED])
    [grounding] = grounder.ground([request])
    assert grounding.regions == [] and grounding.phrase_regions == [None]
    assert grounder.provenance() == {"name": "none"} and not grounder.needs_image


def test_grounders_are_batched_and_describe_themselves():
    grounder = build_grounder(GroundingConfig())
    requests = [GroundingRequest(8, 8, [], [], []), GroundingRequest(8, 8, [], [], [LARGE_RED])]
    assert [len(g.regions) for g in grounder.ground(requests)] == [0, 1]
    assert grounder.provenance()["name"] == "annotations" and not grounder.needs_image


def test_unknown_grounder_names_the_field():
    with pytest.raises(ValueError, match="^name: 'owl' is not one of 'annotations', 'detector', 'none'"):
        GroundingConfig("owl")
