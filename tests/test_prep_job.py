"""The data-prep job on a real (local) Ray: accounting, determinism, refusal, the detector on actors
(killed workers: test_prep_faults.py)."""

import json
import os
from collections import Counter

import pytest
import webdataset as wds

from pipeline.config import load_config
from pipeline.prep.config import PrepConfig
from pipeline.prep.job import run
from pipeline.shards import check
from pipeline.synthetic import BROKEN_KINDS, SyntheticConfig, write_corpus

pytestmark = pytest.mark.integration
# What the job records for each kind of broken record the generator writes.
EXPECTED_REASON = {
    "corrupt_image": "image_corrupt",
    "not_an_image": "image_not_decodable",
    "missing_image": "image_missing",
    "zero_pixel_image": "image_empty",
    "decompression_bomb": "image_too_large",
    "empty_caption": "caption_empty",
    "whitespace_caption": "caption_empty",
    "non_string_caption": "caption_not_string",
    "huge_caption": "caption_too_long",
    "invalid_utf8": "invalid_utf8",
    "duplicate_id": "duplicate_id",
    "missing_field": "missing_field",
    "unparseable_line": "unparseable_record",
}
REPAIRED = {
    "cmyk_image": "mode:CMYK",
    "palette_image": "mode:P",
    "la_image": "mode:LA",
    "sixteen_bit_image": "mode:I;16",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    summary = write_corpus(str(out), SyntheticConfig(num_records=60, num_broken=2 * len(BROKEN_KINDS)))
    return out, summary


def _config(corpus_dir, out, *overrides):
    return load_config(
        PrepConfig,
        "configs/prep/default.yaml",
        [f"input.index={corpus_dir}/records.jsonl", f"output={out}", "samples_per_shard=16", *overrides],
    )


def test_every_input_is_written_or_dropped_with_its_reason(local_ray, corpus, tmp_path):
    corpus_dir, summary = corpus
    m = run(_config(corpus_dir, tmp_path / "ds"))
    totals = m.data["totals"]
    lines = sum(1 for line in (corpus_dir / "records.jsonl").read_bytes().split(b"\n") if line.strip())
    assert totals["inputs"] == lines == totals["written"] + totals["dropped"]

    expected_drops = Counter()
    for kind, count in summary.broken.items():
        if kind in EXPECTED_REASON:
            expected_drops[EXPECTED_REASON[kind]] += count
    assert totals["dropped_by_reason"] == dict(expected_drops)
    assert totals["repaired_by_reason"] == {
        REPAIRED[k]: n for k, n in summary.broken.items() if k in REPAIRED
    }
    assert totals["boxes_dropped_by_reason"]  # bad_boxes records keep their record, lose their bad boxes
    assert m.dropped().num_rows == totals["dropped"]

    assert check.verify(m) == [] and check.validate(m) == []
    samples = list(wds.WebDataset(m.shard_urls(), shardshuffle=False))
    assert len(samples) == m.num_samples == sum(s.samples for s in m.shards)
    metas = [json.loads(s["json"]) for s in samples]
    assert all(meta["sentences"] and meta["phrases"] for meta in metas)
    assert sum(p["region"] is not None for meta in metas for p in meta["phrases"]) > len(metas)
    assert m.data["text"]["model"] and m.data["grounder"]["name"] == "annotations"
    assert sorted(os.listdir(tmp_path / "ds")) == sorted(
        [s.name for s in m.shards] + ["dataset.json", "shards.parquet", "dropped.parquet", "sizes.json"]
    )


def test_rerun_refuses_or_overwrites_with_identical_bytes(local_ray, corpus, tmp_path):
    corpus_dir, _ = corpus
    first = run(_config(corpus_dir, tmp_path / "ds"))
    with pytest.raises(FileExistsError, match="not empty"):
        run(_config(corpus_dir, tmp_path / "ds"))
    second = run(_config(corpus_dir, tmp_path / "ds", "existing_output=overwrite"))
    assert [s.sha256 for s in second.shards] == [s.sha256 for s in first.shards]


def test_detector_grounding_on_ray_actors(local_ray, corpus, tiny_owlv2, tmp_path):
    """grounding.name=detector with a tiny random OWLv2 loaded from a directory: plumbing, not accuracy."""
    corpus_dir, _ = corpus
    m = run(
        _config(
            corpus_dir,
            tmp_path / "ds",
            "grounding.name=detector",
            f"grounding.detector.model={tiny_owlv2}",
            "grounding.detector.score_threshold=0",
        )
    )
    totals = m.data["totals"]
    assert totals["inputs"] == totals["written"] + totals["dropped"] and totals["written"] > 0
    assert check.verify(m) == [] and check.validate(m) == []
    metas = [json.loads(s["json"]) for s in wds.WebDataset(m.shard_urls(), shardshuffle=False)]
    regions = [r for meta in metas for r in meta["regions"]]
    assert regions and all(r["source"] == "detector" for r in regions)
    assert totals["regions"] == len(regions) and totals["linked_phrases"] >= len(regions)
    assert all(p["region"] is None for meta in metas for p in meta["phrases"] if p["kind"] != "noun_chunk")
    assert m.data["grounder"]["model"] == str(tiny_owlv2) and m.data["grounder"]["architecture"] == "owlv2"
    assert m.data["config"]["grounding"]["detector"]["score_threshold"] == 0.0
