"""The training loader on real shards read by webdataset, in-process and with DataLoader workers."""

import io
import itertools
import json
import logging
import random
import tarfile
from collections import Counter

import open_clip
import pytest
import torch
from helpers import tiny_model
from PIL import Image
from torchvision import transforms

from pipeline.batch import text_id
from pipeline.config import BadInput, ConfigError, build
from pipeline.models import TINY_MODEL, ModelConfig
from pipeline.models.transform import normalizer
from pipeline.schema import SCHEMA_VERSION, sample_key
from pipeline.shards.dataset import write_manifest
from pipeline.shards.writer import write_shard
from pipeline.training import rank_stream
from pipeline.training.config import DataConfig
from pipeline.training.data import build_loader, model_input

SIZE = 32  # model input pixels
S, P, R = 2, 3, 2  # K = 6 text slots: phrases and regions beyond these are cut
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40)}
TOKENIZER = open_clip.get_tokenizer("ViT-B-16", context_length=32)
TRANSFORM = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)]
)


def make_sample(source: str, i: int) -> tuple[str, bytes, dict]:
    """A non-square picture of 1..4 boxes; the caption names the sample, then one sentence per box.
    Phrases: "picture" (no region), then "<colour> box" per box (grounded to it)."""
    rng = random.Random(f"{source}:{i}")
    width, height = rng.choice((64, 80, 96)), rng.choice((48, 64))
    img = Image.new("RGB", (width, height), (128, 128, 128))
    colours = rng.sample(list(COLOURS), 1 + i % 4)
    caption = f"{source} picture {i}."
    phrases = [
        {
            "text": "picture",
            "sentence": 0,
            "start": len(source) + 1,
            "end": len(source) + 8,
            "kind": "noun_chunk",
            "region": None,
        }
    ]
    regions = []
    for k, colour in enumerate(colours):
        x0, y0 = rng.randrange(0, width - 12), rng.randrange(0, height - 12)
        box = [x0, y0, x0 + rng.randrange(6, 12), y0 + rng.randrange(6, 12)]
        img.paste(COLOURS[colour], tuple(box))
        sentence = f" A {colour} box is here."
        start = len(caption) + 3
        phrases.append(
            {
                "text": f"{colour} box",
                "sentence": k + 1,
                "start": start,
                "end": start + len(colour) + 4,
                "kind": "noun_chunk",
                "region": k,
            }
        )
        regions.append(
            {"box": [float(v) for v in box], "score": 1.0, "source": "annotation", "label": f"{colour} box"}
        )
        caption += sentence
    sentences = [f"{source} picture {i}."] + [f"A {c} box is here." for c in colours]
    jpg = io.BytesIO()
    img.save(jpg, format="JPEG", quality=90)
    meta = {
        "schema": SCHEMA_VERSION,
        "id": f"{source}-{i}",
        "source": source,
        "width": width,
        "height": height,
        "caption": caption,
        "sentences": sentences,
        "phrases": phrases,
        "regions": regions,
    }
    return sample_key(source, meta["id"]), jpg.getvalue(), meta


def write_dataset(
    root, shards: list[list[tuple[str, bytes, dict]]], claimed: dict[int, int] | None = None
) -> str:
    """Shards and a manifest, as data prep writes them; ``claimed`` overrides shards' counts."""
    root.mkdir(parents=True)
    rows = [write_shard(f"{root}/shard-{n:06d}.tar", samples) for n, samples in enumerate(shards)]
    entries = [
        {"name": f.name, "samples": (claimed or {}).get(n, f.samples), "bytes": f.bytes, "sha256": f.sha256}
        for n, f in enumerate(rows)
    ]
    written = sum(e["samples"] for e in entries)
    manifest = {
        "schema": SCHEMA_VERSION,
        "name": root.name,
        "totals": {"written": written},
        "shards": entries,
    }
    write_manifest(str(root), manifest, [], [])
    return str(root)


def chunks(samples, size):
    return [samples[i : i + size] for i in range(0, len(samples), size)]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """alpha: 48 samples in 6 shards; beta: 16 in 4; gamma: 48 in 12 (mixing); bad: see below."""
    root = tmp_path_factory.mktemp("datasets")
    samples = {
        name: [make_sample(name, i) for i in range(n)]
        for name, n in (("alpha", 48), ("beta", 16), ("gamma", 48), ("bad", 32))
    }
    out = {
        name: write_dataset(root / name, chunks(samples[name], size))
        for name, size in (("alpha", 8), ("beta", 4), ("gamma", 4))
    }

    # bad: 4 shards of 8 with a truncated JPEG (#3), garbage JSON (#9) and no caption (#12), then a
    # fifth "shard" that is not a tar at all but claims 8 samples: 40 samples, 5 batches of 8
    bad = samples["bad"]
    bad[3] = (bad[3][0], bad[3][1][: len(bad[3][1]) // 2], bad[3][2])
    out["bad"] = write_dataset(root / "bad", [*chunks(bad, 8), []], claimed={4: 8})
    (root / "bad" / "shard-000004.tar").write_bytes(b"not a tar file " * 100)
    bad[12] = (bad[12][0], bad[12][1], {k: v for k, v in bad[12][2].items() if k != "caption"})
    with tarfile.open(
        root / "bad" / "shard-000001.tar", "w"
    ) as tar:  # by hand: write_shard writes valid samples
        for key, jpg, meta in bad[8:16]:
            body = b"{garbage" if key == bad[9][0] else json.dumps(meta).encode()
            for name, data in ((f"{key}.jpg", jpg), (f"{key}.json", body)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    out["records"] = {text_id(m["caption"]): m for ss in samples.values() for _, _, m in ss if "caption" in m}
    return out


def loader(paths, *, batch_size=4, workers=0, rank=0, world_size=1, start_batch=0, **cfg):
    config = DataConfig(
        manifests=tuple(paths),
        batch_size=batch_size,
        workers=workers,
        num_sentences=S,
        num_phrases=P,
        num_regions=R,
        **cfg,
    )
    return build_loader(
        config,
        tokenizer=TOKENIZER,
        transform=TRANSFORM,
        image_size=SIZE,
        rank=rank,
        world_size=world_size,
        start_batch=start_batch,
    )


def take(batches, n):
    return list(itertools.islice(iter(batches), n))


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("images", "tokens", "token_mask", "text_ids", "boxes", "region_slot", "region_mask"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


def test_batch_shapes_masks_texts_and_boxes(datasets):
    data = loader([datasets["alpha"]])
    assert (data.num_samples, data.batches_per_epoch) == (48, 12)
    batch = next(iter(data))
    assert batch.images.shape == (4, 3, SIZE, SIZE) and batch.images.dtype == torch.float32
    assert batch.tokens.shape == (4, 1 + S + P, 32) and batch.boxes.shape == (4, R, 4)
    assert batch.token_mask[:, 0].all() and not batch.images.is_cuda
    for b in range(4):
        meta = datasets["records"][int(batch.text_ids[b, 0])]
        # texts: caption, the first S sentences, the first P phrases, in order
        texts = [meta["caption"], *meta["sentences"][:S], *[p["text"] for p in meta["phrases"][:P]]]
        assert batch.token_mask[b].sum() == len(texts)
        assert torch.equal(batch.tokens[b, : len(texts)], TOKENIZER(texts))
        # regions: those of the kept phrases, first R, boxes scaled from stored to model pixels
        linked = [
            (1 + S + i, meta["regions"][p["region"]])
            for i, p in enumerate(meta["phrases"][:P])
            if p["region"] is not None
        ][:R]
        assert batch.region_mask[b].sum() == len(linked)
        sx, sy = SIZE / meta["width"], SIZE / meta["height"]
        for r, (slot, region) in enumerate(linked):
            x0, y0, x1, y1 = region["box"]
            assert batch.boxes[b, r].tolist() == pytest.approx([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
            assert int(batch.region_slot[b, r]) == slot
            assert batch.text_ids[b, slot] == text_id(region["label"])  # the slot holds the linked phrase


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_and_exact_resume_across_epochs(datasets, workers):
    data = loader([datasets["alpha"]], workers=workers)
    full = take(data, 16)  # 12 batches per epoch: into the second epoch
    assert_same(full, take(loader([datasets["alpha"]], workers=workers), 16))
    for start in (3, 11):  # 11: the resumed loader crosses the epoch boundary
        resumed = loader([datasets["alpha"]], workers=workers, start_batch=start)
        assert_same(full[start:], take(resumed, 16 - start))
    ids = [int(i) for b in full[:12] for i in b.text_ids[:, 0]]
    assert len(set(ids)) == 48  # an epoch is every sample once
    other = take(loader([datasets["alpha"]], workers=workers, seed=1), 1)[0]
    assert not torch.equal(other.text_ids, full[0].text_ids)


def test_resume_with_odd_epochs_and_workers_skips_without_decoding(datasets, monkeypatch):
    # 3 batches per epoch with 2 workers: which worker serves which batch shifts every epoch
    full = take(loader([datasets["alpha"]], batch_size=16, workers=2), 8)
    assert_same(full[4:], take(loader([datasets["alpha"]], batch_size=16, workers=2, start_batch=4), 4))
    in_process = take(loader([datasets["alpha"]], batch_size=16), 7)
    decoded = Counter()
    real = rank_stream.decode
    monkeypatch.setattr(rank_stream, "decode", lambda *a: decoded.update(["sample"]) or real(*a))
    assert_same(in_process[5:], take(loader([datasets["alpha"]], batch_size=16, start_batch=5), 2))
    assert decoded["sample"] == 2 * 16  # the 5 skipped batches were read, never decoded


def test_resampled_mode_resumes_exactly(datasets):
    paths = [datasets["alpha"], datasets["beta"]]
    full = take(loader(paths, mode="resampled"), 20)
    assert_same(full[7:], take(loader(paths, mode="resampled", start_batch=7), 13))


def test_ranks_see_disjoint_samples_within_an_epoch(datasets):
    ranks = [take(loader([datasets["alpha"]], rank=r, world_size=2, workers=2), 6) for r in range(2)]
    assert [len(b) for b in ranks] == [6, 6]  # batches_per_epoch = 48 // (4 × 2)
    ids = [{int(i) for b in batches for i in b.text_ids[:, 0]} for batches in ranks]
    assert len(ids[0]) == len(ids[1]) == 24 and not ids[0] & ids[1]


def test_corrupt_samples_and_unreadable_shards_are_skipped_and_counted(datasets, caplog):
    expected = {"bad_image": 1, "bad_json": 1, "bad_sample": 1, "shard_unreadable": 8}
    with caplog.at_level(logging.WARNING):
        data = loader([datasets["bad"]], batch_size=8)
        batches = take(data, data.batches_per_epoch)
    assert data.skipped == expected
    assert all(b.images.shape[0] == 8 and b.token_mask[:, 0].all() for b in batches)
    assert "shard-000004.tar" in caplog.text and "bad_image" in caplog.text
    # with worker processes the counts travel with the batches to this process
    data = loader([datasets["bad"]], batch_size=8, workers=2)
    take(data, data.batches_per_epoch)
    assert data.skipped == expected


def test_a_batch_without_any_usable_sample_raises(tmp_path):
    path = write_dataset(tmp_path / "gone", [[], []], claimed={0: 4, 1: 4})  # shards promise what they lack
    with pytest.raises(BadInput, match="no usable sample in a batch of 4"):
        next(iter(loader([path])))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"manifests": []}, "data.manifests: required"),
        ({"batch_size": 0}, "data.batch_size: must be >= 1"),
        ({"workers": -1}, "data.workers: must be >= 0"),
        ({"mode": "shuffled"}, "data.mode: 'shuffled' is not one of"),
        ({"weights": [1.0]}, "data.weights: mixing weights need mode=resampled"),
        ({"weights": [1.0, 2.0], "mode": "resampled"}, "data.weights: 2 weights for 1 manifests"),
        ({"weights": [0.0], "mode": "resampled"}, "data.weights: must all be > 0"),
        ({"num_phrases": -1}, "data.num_phrases: must be >= 0"),
        ({"shuffle_bufer": 5}, "data.shuffle_bufer: unknown key"),
    ],
)
def test_bad_config_names_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        build(DataConfig, {"manifests": ["x"], "batch_size": 4, **values}, prefix="data.")


def test_setups_that_cannot_work_fail_before_loading(datasets):
    with pytest.raises(ValueError, match="data.workers: 6 shards"):
        loader([datasets["alpha"]], world_size=4, workers=2)
    with pytest.raises(ValueError, match="data.batch_size: 64"):
        loader([datasets["alpha"]], batch_size=64)
    with pytest.raises(ValueError, match="transform"):
        build_loader(
            DataConfig(manifests=(datasets["alpha"],), batch_size=4),
            tokenizer=TOKENIZER,
            transform=transforms.Compose([transforms.RandomCrop(16), transforms.ToTensor()]),
            image_size=SIZE,
        )


def test_mixing_weights_are_per_dataset_shares(datasets):
    # beta holds 16 samples, gamma 48: by size beta would supply 25 %; weighted 3:1 it supplies 75 %
    data = loader([datasets["beta"], datasets["gamma"]], batch_size=8, mode="resampled", weights=(3.0, 1.0))
    sources = Counter(
        datasets["records"][int(i)]["source"] for b in take(data, 100) for i in b.text_ids[:, 0]
    )
    assert sources["beta"] / sum(sources.values()) == pytest.approx(0.75, abs=0.07)


@pytest.mark.integration
def test_reads_what_data_prep_writes(generated_shards):
    """The real prep output (spaCy phrases, grounded regions) at the β-CLIP shapes: nothing skipped."""
    cfg = DataConfig(manifests=(str(generated_shards),), batch_size=8, workers=2)
    data = build_loader(cfg, tokenizer=TOKENIZER, transform=TRANSFORM, image_size=SIZE)
    batches = take(data, data.batches_per_epoch)
    assert data.num_samples == 96 and len(batches) == 12 and not data.skipped
    assert batches[0].tokens.shape == (8, 36, 32) and batches[0].boxes.shape == (8, 16, 4)
    assert sum(int(b.region_mask.sum()) for b in batches) > 96  # phrases do get their regions
    assert all(((b.boxes >= 0) & (b.boxes <= SIZE)).all() for b in batches)


@pytest.mark.parametrize("workers", [0, 2])
def test_data_none_of_whose_samples_parse_is_one_line_naming_why(tmp_path, workers):
    """Raised in a DataLoader worker, the error still reaches the run as its own one line."""
    samples = [(f"k{i}", b"jpg", {"caption": "not schema v1"}) for i in range(8)]
    path = write_dataset(tmp_path / "foreign", [samples[:4], samples[4:]])
    with pytest.raises(BadInput) as refused:
        next(iter(loader([path], workers=workers)))
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert message.startswith("data.manifests: no usable sample in a batch of 4 ({'bad_sample': 4})")
    assert "schema: missing" in message


def test_a_dataset_without_samples_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match=r"^data.manifests\[0\]: .* has no samples"):
        loader([write_dataset(tmp_path / "empty", [])])


def test_the_model_input_is_read_from_the_config_as_the_built_model_takes_it():
    """The run's loader gets its image size and normalisation without building the model."""
    side, transform = model_input(ModelConfig(name=TINY_MODEL, pretrained=None))
    visual = tiny_model().clip.visual
    image = Image.new("RGB", (side, side), (200, 30, 90))
    assert side == visual.image_size[0] and torch.equal(transform(image), normalizer(visual)(image))
    with pytest.raises(ConfigError, match="model.name: 'no-such-model'"):
        model_input(ModelConfig(name="no-such-model", pretrained=None))
