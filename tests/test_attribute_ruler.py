"""The indexed attribute ruler against spaCy's own: the same matches and the same token attributes
on text that fires every kind of rule the English models have; spaCy's matcher where a pattern is
outside the compiled forms."""

import random

import pytest
import spacy
from spacy.pipeline import AttributeRuler

from pipeline.synthetic import SyntheticConfig, draw_scene
from pipeline.text.attribute_ruler import FACTORY, IndexedAttributeRuler, index_attribute_ruler
from pipeline.text.config import TextConfig
from pipeline.text.nlp import REQUIRED_PIPES, load_nlp

# Contractions and their multi-token rules, be/have/do as auxiliaries and verbs, pronouns by their
# dependency, "there is", subordinators, determiners as pronouns, negation, whitespace tokens.
HAND_WRITTEN = [
    "I ain't gonna do it, y'all, and we gotta go. Let's see: nothin' is here, c'mon.",
    "It's a dog that is sitting  on the mat, and there are two cats.\n\nThey're not here; I'm sure.",
    "You gave it to me. I know it and you know it. She has had it, he does n't, they've done it.",
    "Whether or not it rains, because the sky is grey, this is what those are: his and hers.",
    "If that's all, we'll leave   while they wait.\tThe boy didn't see which one was hers.",
    "A dog  \n  and a cat; wasn't it? Yes, it was, but only because somebody said so.",
]


def captions(n: int, seed: int) -> list[str]:
    rng, cfg = random.Random(seed), SyntheticConfig(image_size=64)
    return [draw_scene(rng, cfg)[2] for _ in range(n)]


@pytest.fixture(scope="module")
def indexed():
    return load_nlp(TextConfig()).nlp


@pytest.fixture(scope="module")
def stock():
    nlp = spacy.load(load_nlp(TextConfig()).name)
    nlp.select_pipes(enable=list(REQUIRED_PIPES))
    return nlp


def token_attributes(doc):
    return [(t.text, t.tag_, t.pos_, str(t.morph), t.lemma_, t.dep_, t.is_space) for t in doc]


def test_load_nlp_indexes_the_ruler_under_its_own_name(indexed, stock):
    assert isinstance(indexed.get_pipe("attribute_ruler"), IndexedAttributeRuler)
    assert indexed.pipe_names == stock.pipe_names
    assert indexed.get_pipe("attribute_ruler").patterns == stock.get_pipe("attribute_ruler").patterns


def test_the_same_attributes_and_matches_as_spacys_ruler_on_every_kind_of_rule(stock, indexed):
    texts = HAND_WRITTEN + captions(300, seed=3)
    for ours, theirs in zip(indexed.pipe(texts), stock.pipe(texts), strict=True):
        assert token_attributes(ours) == token_attributes(theirs), ours.text

    # The matches themselves, on the parsed docs before the ruler (it reads tag, dep and text).
    ruler, spacys = indexed.get_pipe("attribute_ruler"), stock.get_pipe("attribute_ruler")
    fired = set()
    with stock.select_pipes(disable=["attribute_ruler", "lemmatizer"]):
        for doc in stock.pipe(texts):
            theirs = sorted({(rule, s, e) for rule, _, s, e in spacys.match(doc)})
            assert [(rule, s, e) for rule, _, s, e in ruler.match(doc)] == theirs, doc.text
            fired |= {rule for rule, _, _ in theirs}

    # Not vacuous: among the rules that fired are ones of each compiled form.
    patterns = [p["patterns"][0] for p in spacys.patterns]
    forms = {
        "IN": lambda p: any(isinstance(v, dict) and "IN" in v for t in p for v in t.values()),
        "NOT_IN": lambda p: any(isinstance(v, dict) and "NOT_IN" in v for t in p for v in t.values()),
        "REGEX": lambda p: any(isinstance(v, dict) and "REGEX" in v for t in p for v in t.values()),
        "two tokens": lambda p: len(p) == 2,
        "IS_SPACE": lambda p: any("IS_SPACE" in t for t in p),
        "DEP": lambda p: any("DEP" in t for t in p),
    }
    for form, has in forms.items():
        assert any(has(patterns[rule]) for rule in fired), f"no {form} rule fired"
    assert len(fired) >= 60


def test_a_pattern_outside_the_compiled_forms_keeps_spacys_matcher():
    rules = [
        {"patterns": [[{"LOWER": "red", "OP": "+"}]], "attrs": {"LEMMA": "RED"}},
        {"patterns": [[{"LOWER": "blue"}], [{"ORTH": "Green"}]], "attrs": {"LEMMA": "colour"}},
    ]
    docs = []
    for factory in (FACTORY, "attribute_ruler"):
        nlp = spacy.blank("en")
        nlp.add_pipe(factory).add_patterns(rules)
        docs.append(nlp("red red blue Green green"))
    ours, theirs = docs
    assert [t.lemma_ for t in ours] == [t.lemma_ for t in theirs] == ["RED", "RED", "colour", "colour", ""]


def test_several_patterns_to_a_rule_and_an_index_into_the_span():
    nlp = spacy.blank("en")
    nlp.add_pipe("attribute_ruler")
    index_attribute_ruler(nlp)
    ruler = nlp.get_pipe("attribute_ruler")
    assert isinstance(ruler, IndexedAttributeRuler)
    ruler.add(
        [[{"LOWER": "big"}, {"TEXT": "dog"}], [{"lower": "a"}, {"LOWER": {"IN": ["cat", "dog"]}}]],
        {"LEMMA": "x"},
        index=-1,
    )
    ruler.add([[{"LOWER": {"REGEX": "^d.g$"}}]], {"LEMMA": "y"})  # later rules win
    reference = AttributeRuler(nlp.vocab)
    reference.add_patterns(ruler.patterns)
    text = "a big dog and a cat and a dig"
    assert [t.lemma_ for t in nlp(text)] == [t.lemma_ for t in reference(nlp.make_doc(text))]
    assert [t.lemma_ for t in nlp(text)] == ["", "", "y", "", "", "x", "", "", "y"]


def test_rules_replaced_by_as_many_new_ones_are_matched_anew():
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe(FACTORY)
    ruler.add([[{"LOWER": "cat"}]], {"LEMMA": "feline"})
    assert nlp("a cat")[1].lemma_ == "feline"
    ruler.initialize(lambda: [], patterns=[{"patterns": [[{"LOWER": "a"}]], "attrs": {"LEMMA": "one"}}])
    assert [t.lemma_ for t in nlp("a cat")] == ["one", ""]
