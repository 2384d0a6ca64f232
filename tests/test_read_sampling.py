"""What one read of a sample gives the model: β-CLIP's drawn sentences, the crop and its boxes."""

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError, build
from pipeline.models.transform import model_input_image, random_resized_crop
from pipeline.schema import Phrase, Region, Sample
from pipeline.training.config import DataConfig
from pipeline.training.decode import BadSample, decode, read_rng, sampled_texts, select_texts, to_view

# as text.rules=bclip stores them: β-CLIP's split on ". " leaves the period on the last one only
SENTENCES = ["A red ball lies on the grass", "A dog runs next to it", "The sky is blue."]


def _sample(sentences=SENTENCES, phrases=(), regions=()) -> Sample:
    return Sample("s", "test", 200, 100, " ".join(sentences), list(sentences), list(phrases), list(regions))


def _phrase(text, sentence, start, kind="noun_chunk", region=None) -> Phrase:
    return Phrase(text, sentence, start, start + len(text), kind, region)


def _cfg(**kw) -> DataConfig:
    return DataConfig(manifests=("x",), batch_size=1, **kw)


def test_fewer_sentences_than_slots_are_all_taken_in_order_and_joined_as_beta_clip_does():
    """datasets.py: fewer than num_positive_samples sentences → all of them; the caption slot is
    '. '.join(sentences)."""
    phrases = [
        _phrase("next to", 1, 40, "spatial"),
        _phrase("a dog", 1, 30, "noun_chunk"),
        _phrase("runs", 1, 36, "relation"),
        _phrase("a red ball", 0, 0, "noun_chunk"),
        _phrase("The sky", 2, 56, "noun_chunk"),
        _phrase("a dog", 2, 60, "noun_chunk"),  # the same string again: kept once
    ]
    caption, sentences, kept = sampled_texts(
        _sample(phrases=phrases), _cfg(texts="sampled"), random.Random(0)
    )
    assert caption == "A red ball lies on the grass. A dog runs next to it. The sky is blue."
    assert sentences == SENTENCES
    # concepts_minimal's order: noun phrases (in text order), then actions, then relations
    assert [p.text for p in kept] == ["a red ball", "a dog", "The sky", "runs", "next to"]


def test_more_sentences_than_slots_draw_that_many_without_replacement_and_only_their_phrases():
    sentences = [f"Sentence number {i}" for i in range(9)]
    phrases = [_phrase(f"thing {i}", i, 0) for i in range(9)]
    cfg = _cfg(texts="sampled", num_sentences=5, num_phrases=3)
    caption, drawn, kept = sampled_texts(_sample(sentences, phrases), cfg, random.Random(7))
    assert len(drawn) == 5 == len(set(drawn)) and set(drawn) <= set(sentences)
    assert caption == ". ".join(drawn)
    order = [sentences.index(s) for s in drawn]
    assert [p.text for p in kept] == [f"thing {i}" for i in order[:3]]  # drawn order, the first P
    assert sampled_texts(_sample(sentences, phrases), cfg, random.Random(7))[1] == drawn


def test_a_read_draws_the_same_for_the_same_seed_epoch_and_sample_and_else_differs():
    cfg = _cfg(seed=3)
    draws = {(e, k): read_rng(cfg, e, k).random() for e in (0, 1) for k in ("a", "b")}
    assert read_rng(cfg, 0, "a").random() == draws[0, "a"]
    assert len(set(draws.values())) == 4


def test_first_texts_are_unchanged_by_the_rng():
    phrases = [_phrase("a red ball", 0, 0), _phrase("a dog", 1, 30)]
    texts, _ = select_texts(_sample(phrases=phrases), _cfg(), (0, 0, 200, 100), 64, random.Random(0))
    assert texts == [" ".join(SENTENCES), *SENTENCES, "a red ball", "a dog"]


def test_boxes_are_cut_to_the_view_and_scaled_and_lost_under_a_pixel():
    view = (50, 20, 150, 70)  # 100 x 50 stored pixels shown as 64 x 64
    assert to_view((60, 30, 100, 60), view, 64) == pytest.approx((6.4, 12.8, 32.0, 51.2))
    assert to_view((0, 0, 70, 200), view, 64) == pytest.approx((0.0, 0.0, 12.8, 64.0))  # cut
    assert to_view((0, 0, 50.5, 90), view, 64) is None  # 0.5 px of it in view: 0.64 model px
    assert to_view((160, 0, 190, 90), view, 64) is None  # outside


def test_random_resized_crop_follows_torchvision_bounds_and_is_repeatable():
    for seed in range(50):
        x0, y0, x1, y1 = random_resized_crop((400, 300), (0.5, 1.0), random.Random(seed))
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 300
        assert 0.5 * 120_000 * 0.97 <= (x1 - x0) * (y1 - y0) <= 120_000
        assert 3 / 4 * 0.97 <= (x1 - x0) / (y1 - y0) <= 4 / 3 * 1.03
    assert random_resized_crop((400, 300), (0.5, 1.0), random.Random(1)) == random_resized_crop(
        (400, 300), (0.5, 1.0), random.Random(1)
    )
    # no crop of half the area fits a 1000 x 10 strip within the ratios: the centre crop,
    # w = round(10 * 4/3) = 13 at (1000 - 13) // 2
    assert random_resized_crop((1000, 10), (0.5, 1.0), random.Random(0)) == (493, 0, 506, 10)


def test_a_cropped_read_shows_its_box_where_the_box_says():
    """A green square on grey: after any crop, the region's box in the model input is green."""
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    image.paste((0, 200, 0), (80, 30, 140, 80))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    phrase = _phrase("A green square", 0, 0, region=0)
    sample = Sample("s", "test", 200, 100, "A green square.", ["A green square."], [phrase], [])
    sample = Sample(**{**sample.__dict__, "regions": [Region((80.0, 30.0, 140.0, 80.0), 1.0, "annotation")]})
    raw = {"__key__": "s", "jpg": out.getvalue(), "json": json.dumps(sample.to_json()).encode()}
    cfg = _cfg(crop_scale=(0.5, 1.0))
    seen = set()
    for epoch in range(6):
        example = decode(raw, cfg, 64, lambda im: np.asarray(im), epoch)
        assert example.texts[-1] == "A green square"
        ((box, _),) = example.regions
        x0, y0, x1, y1 = (round(v) for v in box)
        inside = example.image[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3).astype(int)
        assert inside.size and np.abs(inside - (0, 200, 0)).max() < 40
        seen.add(box)
    assert len(seen) > 1  # the crop differs between epochs


def _with_score(score) -> bytes:
    region = Region((0.0, 0.0, 10.0, 10.0), 1.0, "annotation")
    d = Sample(**{**_sample().__dict__, "regions": [region]}).to_json()
    d["regions"][0]["score"] = score
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    "part, reason",
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe\x00", "bad_json"),
        (b"[" * 100_000, "bad_json"),
        (b'{"schema": 1}', "bad_sample"),
        (_with_score(10**400), "bad_sample"),  # an int no float holds: still the sample's fault
    ],
)
def test_a_json_part_that_is_no_sample_is_named_for_what_is_wrong(part, reason):
    with pytest.raises(BadSample) as bad:
        decode({"__key__": "s", "jpg": b"", "json": part}, _cfg(), 64, np.asarray)
    assert bad.value.reason == reason
    assert Sample.parse(_with_score(0.5)).regions[0].score == 0.5


def test_model_input_without_a_crop_is_the_whole_image():
    image = Image.new("RGB", (200, 100), (10, 20, 30))
    out = io.BytesIO()
    image.save(out, format="PNG")
    whole, size = model_input_image(out.getvalue(), 32)
    assert size == (200, 100) and whole.size == (32, 32)


@pytest.mark.parametrize("crop_scale", [[0.5], [0.0, 1.0], [0.9, 0.5], [0.5, 1.5]])
def test_bad_crop_scales_name_the_key(crop_scale):
    with pytest.raises(ConfigError, match="^data.crop_scale"):
        build(DataConfig, {"manifests": ["x"], "batch_size": 1, "crop_scale": crop_scale}, prefix="data.")
