"""The ``detector`` grounder: post-processing on hand-made outputs, then a tiny random-init OWLv2
loaded from a directory (plumbing, shapes, thresholds, merging, back-mapping; never accuracy)."""

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou
from transformers import CLIPConfig

from pipeline.config import ConfigError, load_config
from pipeline.grounding import build_grounder
from pipeline.grounding.base import GroundingRequest
from pipeline.grounding.config import DetectorConfig, GroundingConfig
from pipeline.grounding.detector import (
    best_boxes,
    ground_detections,
    merge_overlaps,
    pixel_boxes,
    query_phrases,
)
from pipeline.prep.config import PrepConfig
from pipeline.prep.pool import pool_size, worker_num_gpus
from pipeline.schema import Phrase, Region, clean_box
from pipeline.text.lexeme import Lexeme


def sigmoid(x: float, decimals: int = 4) -> float:
    return round(1 / (1 + math.exp(-x)), decimals)


def request(width: int, height: int, texts: list[str], kinds: list[str] | None = None, image=None):
    """Phrases laid end to end; noun chunks get a lexeme, other kinds none (as the parser does)."""
    kinds = kinds or ["noun_chunk"] * len(texts)
    starts = np.cumsum([0] + [len(t) + 1 for t in texts])
    phrases = [Phrase(t, 0, int(s), int(s) + len(t), k) for t, s, k in zip(texts, starts, kinds)]
    lexemes = [Lexeme(t.split()[-1]) if k == "noun_chunk" else None for t, k in zip(texts, kinds)]
    return GroundingRequest(width, height, phrases, lexemes, [], image)


# --- post-processing, on hand-made model outputs -------------------------------------------------


def test_queries_are_the_noun_chunks_in_reading_order_up_to_the_cap():
    lexemes = [Lexeme("circle"), None, Lexeme("square"), Lexeme("dog")]
    assert query_phrases(lexemes, 8) == [0, 2, 3]
    assert query_phrases(lexemes, 2) == [0, 2]
    assert query_phrases([None, None], 8) == []


def test_boxes_are_relative_to_the_image_padded_to_a_square():
    wide = pixel_boxes(torch.tensor([[0.5, 0.25, 0.5, 0.5], [0.5, 0.75, 0.2, 0.2]]), width=200, height=100)
    torch.testing.assert_close(
        wide, torch.tensor([[50.0, 0.0, 150.0, 100.0], [80.0, 130.0, 120.0, 170.0]])
    )  # 2nd: in the padding
    tall = pixel_boxes(torch.tensor([[0.25, 0.5, 0.5, 1.0]]), width=50, height=100)
    torch.testing.assert_close(tall, torch.tensor([[0.0, 0.0, 50.0, 100.0]]))
    # transformers' own OWLv2 post-processing agrees, given (height, width) of the unpadded image
    from transformers import Owlv2ImageProcessor

    boxes = torch.rand(2, 5, 4) * 0.5 + 0.25
    outputs = SimpleNamespace(logits=torch.zeros(2, 5, 1), pred_boxes=boxes)
    library = Owlv2ImageProcessor().post_process_object_detection(
        outputs, threshold=-1, target_sizes=[(100, 200), (90, 30)]
    )
    for out, box, (height, width) in zip(library, boxes, [(100, 200), (90, 30)]):
        torch.testing.assert_close(out["boxes"], pixel_boxes(box, width, height))


def test_each_query_takes_its_best_box():
    logits = torch.tensor([[0.0, 5.0], [2.0, -1.0], [1.0, 1.0]])  # 3 boxes × 2 queries
    boxes = torch.arange(12.0).reshape(3, 4)
    scores, best = best_boxes(logits, boxes)
    torch.testing.assert_close(scores, torch.tensor([sigmoid(2.0, 9), sigmoid(5.0, 9)]))
    assert best.tolist() == [boxes[1].tolist(), boxes[0].tolist()]


@pytest.mark.parametrize(
    "iou, owners",
    [
        (0.7, [1, 1, 2, 1]),  # a and d overlap b (IoU 0.82, 1.0 with a): b, the best, represents all three
        (0.9, [0, 1, 2, 0]),  # only a and d (identical) are one object; a scores higher
        (1.0, [0, 1, 2, 3]),  # nothing merges
    ],
)
def test_overlapping_boxes_merge_into_the_best_scored(iou, owners):
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10]], dtype=torch.float
    )
    assert merge_overlaps(boxes, torch.tensor([0.9, 0.95, 0.5, 0.3]), iou) == owners


# A 100×50 image: OWLv2 saw it padded to 100×100. Boxes (cx, cy, w, h) of the padded square:
OUT_BOXES = torch.tensor(
    [
        [0.2, 0.2, 0.2, 0.2],  # (10, 10, 30, 30)
        [0.21, 0.2, 0.2, 0.2],  # (11, 10, 31, 30): IoU 0.9 with the first
        [0.7, 0.25, 0.2, 0.2],  # (60, 15, 80, 35)
        [0.5, 0.9, 0.2, 0.2],
    ]
)  # (40, 80, 60, 100): in the padding, below the image
PHRASES = ["a red circle", "above a square", "the circle", "a blue square", "a dog"]
OUT_LOGITS = torch.tensor(
    [
        [3.0, 0.0, -5.0, 0.0],  # queries: red circle, the circle, blue square, dog
        [0.0, 4.0, -5.0, 0.0],
        [0.0, 0.0, -3.0, 0.0],
        [0.0, 0.0, -4.0, 5.0],
    ]
)


def hand_made(threshold: float, iou: float):
    req = request(100, 50, PHRASES, ["noun_chunk", "spatial", "noun_chunk", "noun_chunk", "noun_chunk"])
    return ground_detections(req, query_phrases(req.lexemes, 8), OUT_LOGITS, OUT_BOXES, threshold, iou)


def test_phrases_link_to_thresholded_clipped_merged_boxes():
    grounding = hand_made(threshold=0.1, iou=0.7)
    # "a red circle" and "the circle" found the same object: one region, labelled by the better score;
    # "a blue square" scored too low; "a dog"'s box lies outside the image; "above a square" is no query.
    assert grounding.regions == [Region((11.0, 10.0, 31.0, 30.0), sigmoid(4.0), "detector", "the circle")]
    assert grounding.phrase_regions == [0, None, 0, None, None]
    assert grounding.ambiguous == 0


def test_threshold_zero_links_every_usable_box_and_one_links_nothing():
    everything = hand_made(threshold=0.0, iou=1.0)
    assert [r.box for r in everything.regions] == [
        (10.0, 10.0, 30.0, 30.0),
        (11.0, 10.0, 31.0, 30.0),
        (60.0, 15.0, 80.0, 35.0),
    ]
    assert everything.phrase_regions == [0, None, 1, 2, None]
    assert hand_made(threshold=1.0, iou=0.7).regions == []


def test_detector_workers_take_a_gpu_when_the_cluster_has_one():
    def gpus(cluster_gpus, *overrides):
        cfg = load_config(PrepConfig, None, ["input.index=x.jsonl", "output=out", *overrides])
        return worker_num_gpus(cfg, cluster_gpus)

    assert gpus(8, "grounding.name=detector") == 1.0
    assert gpus(0, "grounding.name=detector") == 0.0
    assert gpus(8) == 0.0  # the annotations grounder has no model to put there
    assert gpus(8, "grounding.name=detector", "ray.worker_num_gpus=0.5") == 0.5


def test_worker_pool_fills_the_cluster_cpus_or_gpus_whichever_runs_out_first():
    def size(resources, gpus_per_worker, *overrides):
        cfg = load_config(PrepConfig, None, ["input.index=x.jsonl", "output=out", *overrides])
        return pool_size(cfg, resources, gpus_per_worker)

    assert size({"CPU": 96.0, "GPU": 8.0}, 0.0) == 96
    assert size({"CPU": 96.0, "GPU": 8.0}, 1.0) == 8
    assert size({"CPU": 96.0, "GPU": 8.0}, 0.25) == 32
    assert size({"CPU": 96.0}, 0.0, "ray.worker_num_cpus=4") == 24
    assert size({"CPU": 0.5}, 0.0) == 1  # never none
    assert size({"CPU": 96.0}, 0.0, "ray.workers=3") == 3


# --- configuration -------------------------------------------------------------------------------


def test_detector_settings_live_under_grounding_detector():
    assert GroundingConfig("detector").detector == DetectorConfig()  # defaults filled in
    assert GroundingConfig("annotations").detector is None

    def prep(*overrides):
        return load_config(PrepConfig, None, ["input.index=x.jsonl", "output=out", *overrides])

    preset = load_config(PrepConfig, "configs/prep/detector.yaml", ["input.index=x.jsonl", "output=out"])
    assert preset.grounding.detector == DetectorConfig() and preset.ray.worker_num_gpus is None
    cfg = prep("grounding.name=detector", "grounding.detector.nms_iou=0.5")
    assert cfg.grounding.detector.nms_iou == 0.5 and cfg.grounding.detector.max_queries == 32
    with pytest.raises(ConfigError, match=r"^grounding\.detector\.score_threshold: must be in \[0, 1\]"):
        prep("grounding.name=detector", "grounding.detector.score_threshold=1.5")
    with pytest.raises(ConfigError, match=r"^grounding\.detector\.max_queries: must be >= 1"):
        prep("grounding.name=detector", "grounding.detector.max_queries=0")
    with pytest.raises(ConfigError, match=r"^grounding\.detector\.dtype: 'half' is not one of"):
        prep("grounding.name=detector", "grounding.detector.dtype=half")
    with pytest.raises(ConfigError, match=r"^grounding\.detector: set, but name is 'annotations'"):
        prep("grounding.detector.model=x")


def test_a_model_that_cannot_be_used_fails_naming_the_key(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"^grounding\.detector\.model: cannot load"):
        build_grounder(GroundingConfig("detector", DetectorConfig(model=str(tmp_path / "missing"))))
    CLIPConfig().save_pretrained(tmp_path / "clip")
    with pytest.raises(
        ConfigError, match=r"^grounding\.detector\.model: .* is a 'clip' model; supported: owlv2"
    ):
        build_grounder(GroundingConfig("detector", DetectorConfig(model=str(tmp_path / "clip"))))
    monkeypatch.setitem(sys.modules, "transformers", None)  # as without the `detector` extra
    with pytest.raises(ConfigError, match=r"^grounding\.name: detector needs transformers"):
        build_grounder(GroundingConfig("detector"))


# --- a tiny random-init OWLv2 through from_pretrained ----------------------------------------------


def image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def detector(model_dir, **settings):
    return build_grounder(GroundingConfig("detector", DetectorConfig(model=str(model_dir), **settings)))


LONG_PHRASE = "a very long phrase with far more words than the sixteen tokens of the text encoder hold"


@pytest.fixture(scope="module")
def requests():
    """Different sizes (wide, tall, square) and phrase counts, including none and no noun chunk."""
    return [
        request(
            96,
            40,
            ["a red circle", "the blue square", "to the left of it", "a tiny green triangle"],
            ["noun_chunk", "noun_chunk", "spatial", "noun_chunk"],
            image(96, 40, 0),
        ),
        request(30, 70, [], image=image(30, 70, 1)),
        request(
            50,
            120,
            ["a dog", "sits on the mat", "the mat"],
            ["noun_chunk", "relation", "noun_chunk"],
            image(50, 120, 2),
        ),
        request(64, 64, ["is above"], ["relation"], image(64, 64, 3)),
        request(64, 64, ["a cat", LONG_PHRASE], image=image(64, 64, 4)),
    ]


def query_scores(grounder, req):
    """Every query's best score and its box as transformers' post-processing maps it to the image."""
    queries = query_phrases(req.lexemes, grounder.cfg.max_queries)
    logits, boxes = grounder.detect([req.image], [[req.phrases[q].text for q in queries]])
    out = SimpleNamespace(logits=logits, pred_boxes=boxes)
    result = []
    for q in range(len(queries)):
        out.logits = logits[..., q : q + 1]
        [library] = grounder.processor.post_process_grounded_object_detection(
            out, threshold=-1, target_sizes=[(req.height, req.width)]
        )
        best = library["scores"].argmax()
        result.append((library["scores"][best].item(), library["boxes"][best].tolist()))
    return result


def test_every_query_links_its_best_box_mapped_to_the_stored_image(tiny_owlv2, requests):
    grounder = detector(tiny_owlv2, score_threshold=0.0, nms_iou=1.0)
    groundings = grounder.ground(requests)
    assert len(groundings) == len(requests)
    for req, grounding in zip(requests, groundings):
        assert len(grounding.phrase_regions) == len(req.phrases)
        queries = query_phrases(req.lexemes, 32)
        expected = (
            [
                clean_box([round(v, 2) for v in box], req.width, req.height)[0]
                for _, box in query_scores(grounder, req)
            ]
            if queries
            else []
        )
        for p, link in enumerate(grounding.phrase_regions):
            if p not in queries:
                assert link is None
                continue
            box = expected[queries.index(p)]
            assert (link is None) == (box is None)  # unlinked only when its best box is not in the image
            if link is not None:
                region = grounding.regions[link]
                assert region.box == pytest.approx(box, abs=0.011) and region.source == "detector"
                assert region.label == req.phrases[p].text and 0.0 < region.score < 1.0
                assert clean_box(list(region.box), req.width, req.height)[0] == region.box
        assert len(grounding.regions) == sum(link is not None for link in grounding.phrase_regions)
    square = groundings[4]  # no padding: every query's box is in the image, one region each
    assert square.phrase_regions == [0, 1]


def test_score_threshold_keeps_only_boxes_scored_at_least_that(tiny_owlv2, requests):
    scores = sorted(
        r.score
        for g in detector(tiny_owlv2, score_threshold=0.0, nms_iou=1.0).ground(requests)
        for r in g.regions
    )
    middle = scores[len(scores) // 2]
    kept = [
        r.score
        for g in detector(tiny_owlv2, score_threshold=middle, nms_iou=1.0).ground(requests)
        for r in g.regions
    ]
    assert sorted(kept) == [s for s in scores if s >= middle] and 0 < len(kept) < len(scores)
    assert all(not g.regions for g in detector(tiny_owlv2, score_threshold=1.0).ground(requests))


def test_merging_leaves_no_two_regions_overlapping_and_keeps_every_link(tiny_owlv2, requests):
    separate = detector(tiny_owlv2, score_threshold=0.0, nms_iou=1.0).ground(requests)
    merged = detector(tiny_owlv2, score_threshold=0.0, nms_iou=0.0).ground(requests)
    assert sum(len(g.regions) for g in merged) < sum(len(g.regions) for g in separate)
    for before, after in zip(separate, merged):
        assert [link is None for link in after.phrase_regions] == [
            link is None for link in before.phrase_regions
        ]
        if len(after.regions) > 1:
            iou = box_iou(*[torch.tensor([r.box for r in after.regions])] * 2)
            assert (iou.fill_diagonal_(0) == 0).all()


def test_results_do_not_depend_on_the_run_or_the_forward_batch(tiny_owlv2, requests):
    first = detector(tiny_owlv2, batch_size=8).ground(requests)
    assert detector(tiny_owlv2, batch_size=8).ground(requests) == first
    one_by_one = detector(tiny_owlv2, batch_size=1).ground(requests)
    assert [g.phrase_regions for g in one_by_one] == [g.phrase_regions for g in first]
    for a, b in zip(one_by_one, first):
        for ra, rb in zip(a.regions, b.regions):
            assert ra.box == pytest.approx(rb.box, abs=0.011) and ra.score == pytest.approx(
                rb.score, abs=1e-5
            )


def test_provenance_without_loading_weights_and_half_precision(tiny_owlv2, requests):
    grounder = detector(tiny_owlv2)
    assert grounder.provenance() == {
        "name": "detector",
        "model": str(tiny_owlv2),
        "revision": None,
        "commit": None,
        "architecture": "owlv2",
        "queries": "noun chunks, reading order",
        "max_queries": 32,
        "score_threshold": 0.1,
        "nms_iou": 0.7,
        "dtype": "float32",
    }  # auto: float32 without a GPU
    assert grounder.needs_image and "model" not in vars(grounder)  # the driver never loads the weights
    half = detector(tiny_owlv2, dtype="bfloat16", score_threshold=0.0)
    groundings = half.ground(requests)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert [len(g.phrase_regions) for g in groundings] == [len(r.phrases) for r in requests]
    assert all(r.source == "detector" for g in groundings for r in g.regions)
