"""Evaluation: the metrics on hand-made cases, the eval set and embeddings against the training
path, and the command's report on generated shards."""

import hashlib
import io
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO
from PIL import Image
from torchvision import transforms

from pipeline.__main__ import main
from pipeline.batch import Batch
from pipeline.config import ConfigError, load_config
from pipeline.eval import EvalConfig
from pipeline.eval import metrics as m
from pipeline.eval.data import EvalImage, load_eval_set
from pipeline.eval.model import embed_images, embed_texts, model_pixels
from pipeline.eval.pooler import pooler_diagnostic
from pipeline.models import FineGrainedCLIP, ModelConfig
from pipeline.models.transform import model_input_image
from pipeline.shards import load_manifest
from pipeline.shards.reader import read_samples
from pipeline.training.collate import collate
from pipeline.training.config import DataConfig
from pipeline.training.decode import decode

ATTRIBUTES = {"size": ["small", "large"], "colour": ["red", "green", "blue"], "shape": ["circle", "square"]}


def test_retrieval_recall_counts_ranks_both_ways():
    image = torch.eye(3)
    text = torch.stack([torch.tensor([1.0, 0, 0]), torch.tensor([0, 0.6, 0.8]), torch.tensor([0, 0, 1.0])])
    r = m.retrieval_recall(image, text, ks=(1, 2))
    # Every image scores its own caption highest; caption 1 prefers image 2 (0.8) to its own (0.6).
    assert r == {"i2t_R@1": 100.0, "i2t_R@2": 100.0, "t2i_R@1": 66.67, "t2i_R@2": 100.0}


def test_retrieval_recall_with_several_captions_per_image():
    """Image-to-text is a hit when any of the image's captions is in the top k; text-to-image
    ranks the images for every caption."""
    r = 0.5**0.5
    image = torch.tensor([[1.0, 0], [0, 1.0], [r, r]])  # A, B, C
    text = torch.tensor([[1.0, 0], [0.6, 0.8], [0.8, 0.6], [0, 1.0], [0.28, 0.96], [-0.6, 0.8]])
    image_of_text = torch.tensor([0, 0, 1, 1, 1, 2])
    # T2I: texts 0, 3, 4 rank their image first; text 5 second (after B); texts 1 and 2 third
    # (both prefer C, then the other one of A and B).
    # I2T: A's best caption (text 0) and B's (text 3) top their rows; C's only caption (text 5,
    # 0.14) is beaten by all five others.
    assert m.retrieval_recall(image, text, (1, 2, 6), image_of_text) == {
        "i2t_R@1": 66.67,
        "i2t_R@2": 66.67,
        "i2t_R@6": 100.0,
        "t2i_R@1": 50.0,
        "t2i_R@2": 66.67,
        "t2i_R@6": 100.0,
    }


def test_topk_accuracy_and_top_labels():
    classes = torch.eye(3)
    regions = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.9], [0.2, 0.0, 1.0]]), dim=1)
    targets = torch.tensor([0, 2, 1])  # right, second best, third
    assert m.topk_accuracy(regions @ classes.T, targets, ks=(1, 2, 3)) == {
        "top1": 33.33,
        "top2": 66.67,
        "top3": 100.0,
    }
    assert m.top_labels(regions @ classes.T, 1).squeeze(1).tolist() == [0, 1, 2]


def test_attribute_negatives_change_exactly_the_named_number_of_attributes():
    assert m.parse_attributes("Small RED circle", ATTRIBUTES) == {
        "size": "small",
        "colour": "red",
        "shape": "circle",
    }
    assert m.parse_attributes("red circle", ATTRIBUTES) is None  # no size
    assert m.parse_attributes("small red green circle", ATTRIBUTES) is None  # two colours
    trials, unparsed = m.make_trials(["small red circle", "a red thing"], ATTRIBUTES, num_negatives=3, seed=0)
    assert unparsed == 1
    by = {t.difficulty: t for t in trials}
    assert set(by) == {"hard", "medium", "easy"} and all(t.box == 0 for t in trials)
    for differ, name in m.DIFFICULTIES.items():
        t = by[name]
        available = {1: 1 + 2 + 1, 2: 2 + 1 + 2, 3: 2}[differ]  # size × colour × shape alternatives
        assert len(t.negatives) == min(3, available) == len(set(t.negatives))
        for negative in t.negatives:
            assert sum(a != b for a, b in zip(negative.split(), t.true.split())) == differ
    pairs = m.attribute_pairs(["large blue square"], ATTRIBUTES)
    assert sorted(p[2] for p in pairs) == [
        "large blue circle",
        "large green square",
        "large red square",
        "small blue square",
    ]
    assert {p[3] for p in pairs} == {"size", "colour", "shape"}


def test_trial_and_pair_accuracy_score_the_true_label_against_negatives():
    text = {
        "small red circle": torch.tensor([1.0, 0.0]),
        "large red circle": torch.tensor([0.0, 1.0]),
        "small green circle": torch.tensor([0.8, 0.6]),
    }
    regions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    trials = [
        m.Trial(0, "small red circle", ("large red circle", "small green circle"), "hard"),
        m.Trial(1, "small red circle", ("large red circle",), "hard"),
    ]
    column = {t: i for i, t in enumerate(text)}
    scores = regions @ torch.stack(list(text.values())).T
    assert m.trial_accuracy(trials, scores, column) == {"hard": 50.0}
    pairs = [
        (0, "small red circle", "large red circle", "size"),
        (1, "small red circle", "small green circle", "colour"),
    ]
    assert m.pair_accuracy(pairs, scores, column) == {"size": 100.0, "colour": 0.0}


def test_chance_levels():
    trials = [m.Trial(0, "a", ("b",), "hard"), m.Trial(0, "a", ("b", "c", "d"), "hard")]
    chance = m.chance_levels(num_images=50, num_classes=20, trials=trials, ks=(1, 10))
    assert chance["retrieval"] == {"i2t_R@1": 2.0, "i2t_R@10": 20.0, "t2i_R@1": 2.0, "t2i_R@10": 20.0}
    assert chance["boxes"] == {"top1": 5.0, "top5": 25.0} and chance["fgovd"] == {"hard": 37.5}


@pytest.mark.parametrize(
    "override, key",
    [
        ("checkpoints=[]", "checkpoints"),
        ("prompt=a photo", "prompt"),
        ("num_negatives=0", "num_negatives"),
        ("attributes={size: [small]}", "attributes"),
        ("recall_ks=[0]", "recall_ks"),
        ("max_imgs=3", "max_imgs"),
        ("checkpoints=[a=x/1, a=x/2]", "checkpoints"),
    ],
)
def test_bad_eval_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(EvalConfig, None, ["data=d", "out=o", "checkpoints=[openclip:FG-Tiny-16]", override])


def test_eval_decodes_as_open_clip_does_where_a_fast_decode_would_not():
    """A photo over twice the model input: eval's pixels are open_clip's own transform's (the
    export's preprocess: squash, bicubic), which clip_benchmark and the papers' code use; the
    training loader's DCT-scaled decode of the same bytes is a different image."""
    model = FineGrainedCLIP(ModelConfig(name="FG-Tiny-16", pretrained=None), False, False).eval()
    visual = model.clip.visual
    noise = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (450, 600, 3), dtype=torch.uint8, generator=noise)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, "JPEG", quality=90)
    jpg = buffer.getvalue()
    theirs = open_clip.image_transform(
        visual.image_size,
        False,
        visual.image_mean,
        visual.image_std,
        resize_mode="squash",
        interpolation="bicubic",
    )(Image.open(io.BytesIO(jpg)))
    ours = model_pixels(model, [EvalImage("x", jpg, 600, 450, "", [], [])])[0]
    assert torch.equal(ours, theirs)
    fast, _ = model_input_image(jpg, visual.image_size[0], draft=True)
    assert not torch.equal(transforms.ToTensor()(fast), transforms.ToTensor()(model_input_image(jpg, 128)[0]))


@pytest.mark.integration
def test_eval_embeddings_match_the_training_model_on_the_same_sample(generated_shards):
    """Eval reads images and boxes exactly as training does: the global embedding and every region
    embedding of a sample equal the training forward's on the loader's batch."""
    torch.manual_seed(0)
    model = FineGrainedCLIP(
        ModelConfig(name="FG-Tiny-16", pretrained=None), with_pooler=False, with_region_head=True
    ).eval()
    images = load_eval_set(str(generated_shards), max_images=3)
    assert all(im.boxes for im in images)
    embedded = embed_images(model, images, batch_size=2)

    visual = model.clip.visual
    size = visual.image_size[0]
    cfg = DataConfig(manifests=(str(generated_shards),), batch_size=3, num_regions=32)
    first_shard = load_manifest(str(generated_shards)).shards[0].url
    raws = [r for _, r in zip(range(3), read_samples(first_shard, lambda e: False))]
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(visual.image_mean, visual.image_std)]
    )
    examples = [decode(raw, cfg, size, transform) for raw in raws]
    batch_tensors = collate(examples, open_clip.get_tokenizer("FG-Tiny-16"), cfg)
    batch = Batch(**batch_tensors)
    with torch.no_grad():
        out = model(batch)
    torch.testing.assert_close(embedded.image, out.image, atol=1e-5, rtol=1e-5)
    for b, im in enumerate(images):
        scale = torch.tensor([size / im.width, size / im.height] * 2)
        for k, box in enumerate(im.boxes):
            match = (batch.boxes[b] - torch.tensor(box) * scale).abs().sum(-1).lt(1e-3) & batch.region_mask[b]
            if match.any():
                region = out.regions[b][match.nonzero()[0, 0]]
                torch.testing.assert_close(embedded.regions["head"][b][k], region, atol=1e-5, rtol=1e-5)
    assert len(embed_texts(model, ["a small red circle", "x" * 3000])) == 2  # long texts are cut, not refused


def test_eval_command_refuses_bad_checkpoints_before_any_work(tmp_path, capsys):
    out, data = tmp_path / "report", str(tmp_path / "shards")
    twice = ["--checkpoint", "tiny=openclip:FG-Tiny-16", "--checkpoint", "runs/x/tiny"]
    assert main(["eval", "--data", data, "--out", str(out), *twice, "max_images=40"]) == 2
    assert "checkpoints: names must differ" in capsys.readouterr().err
    missing = ["--checkpoint", "openclip:FG-Tiny-16", "--checkpoint", str(tmp_path / "no-such-run")]
    assert main(["eval", "--data", data, "--out", str(out), *missing]) == 2
    assert "no-such-run is neither a run folder" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.integration
def test_eval_command_writes_a_report(generated_shards, tmp_path, capsys):
    out = tmp_path / "report"
    where = ["--data", str(generated_shards), "--out", str(out)]
    what = [
        "--checkpoint",
        "untrained=openclip:FG-Tiny-16",
        "--config",
        str(REPO / "configs/eval/synthetic.yaml"),
    ]
    assert main(["eval", *where, *what, "max_images=40", "examples=2"]) == 0, capsys.readouterr().err[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    images = load_eval_set(str(generated_shards), max_images=40)
    assert report["data"]["images"] == 40 and report["data"]["boxes"] == sum(len(im.boxes) for im in images)
    model = report["models"]["untrained"]
    assert set(model["retrieval"]) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert set(model["boxes"]) == {"roi"} and set(model["fgovd"]["roi"]) >= {
        "hard",
        "medium",
        "easy",
        "by_attribute",
    }
    assert all(0 <= v <= 100 for v in model["retrieval"].values())
    for name in ("report.md", "report.html", "fgovd_by_attribute.png", "examples.png"):
        assert (out / name).stat().st_size > 0
    assert "| chance |" in (out / "report.md").read_text()
    lineage = report["lineage"]
    assert (
        lineage["datasets"][0]["sha256"]
        == hashlib.sha256((generated_shards / "dataset.json").read_bytes()).hexdigest()
    )
    assert (
        lineage["checkpoints"] == {"untrained": {"path": "openclip:FG-Tiny-16"}} and lineage["code_version"]
    )


def _eval_fails(capsys, *args: str) -> str:
    """``python -m pipeline eval ...``: exit 2 and one line on stderr, which is returned."""
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(("error: ", "config error: ")), err
    return err


@pytest.mark.parametrize("data", ["empty", "unparsable", "unknown shard"])
def test_eval_data_that_cannot_be_evaluated_is_one_line(tmp_path, capsys, data):
    from test_loader import write_dataset

    samples = [] if data == "empty" else [(f"k{i}", b"jpg", {"caption": "not schema v1"}) for i in range(4)]
    path = write_dataset(tmp_path / "data", [samples])
    extra = ["shards=[shard-000009.tar]"] if data == "unknown shard" else []
    err = _eval_fails(
        capsys, "--data", path, "--checkpoint", "openclip:FG-Tiny-16", "--out", str(tmp_path / "out"), *extra
    )
    assert (
        "shards: 'shard-000009.tar' is not a shard" if extra else f"data: no usable image in {path}"
    ) in err


@pytest.mark.parametrize("file", ["open_clip_model.safetensors", "heads.pt", "open_clip_config.json"])
def test_eval_of_a_truncated_export_is_one_line_naming_the_file(tmp_path, capsys, file):
    from test_loader import chunks, make_sample, write_dataset

    from pipeline.models import TINY_MODEL
    from pipeline.training.export import write_export

    data = write_dataset(tmp_path / "data", chunks([make_sample("a", i) for i in range(4)], 4))
    cfg = ModelConfig(name=TINY_MODEL, pretrained=None)
    write_export(
        FineGrainedCLIP(cfg, with_pooler=True, with_region_head=False), cfg, tmp_path / "export", "test"
    )
    path = tmp_path / "export" / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    err = _eval_fails(
        capsys, "--data", data, "--checkpoint", f"x={tmp_path}/export", "--out", str(tmp_path / "out")
    )
    assert f"error: {path}: " in err


def test_the_pooler_diagnostic_tells_a_fixed_pool_from_a_query_specific_one():
    """Query and key projections at zero: every weight is 1/P, every text gets the same embedding.
    Scaled up: each text attends to its own patches, so its pooled embedding differs."""
    torch.manual_seed(0)
    model = FineGrainedCLIP(
        ModelConfig(name="FG-Tiny-16", pretrained=None), with_pooler=True, with_region_head=False
    )
    images = []
    for i, colour in enumerate(("red", "navy")):
        buffer = io.BytesIO()
        Image.radial_gradient("L").convert("RGB").resize((64, 48)).save(buffer, "JPEG")
        queries = (f"a {colour} picture", "a circle", "a gradient", "a gradient")  # repeats count once
        images.append(EvalImage(str(i), buffer.getvalue(), 64, 48, queries[0], [], [], queries))
    attn = model.pooler.attn
    width = attn.embed_dim
    with torch.no_grad():
        attn.in_proj_weight[: 2 * width] = 0
        attn.in_proj_bias[: 2 * width] = 0
    fixed = pooler_diagnostic(model.eval(), images, batch_size=2)
    assert fixed["images"] == 2
    assert fixed["pooled_cosine"] == pytest.approx(1.0, abs=1e-4) and fixed["text_cosine"] < 0.99
    assert fixed["attention_entropy"] == pytest.approx(1.0) and fixed["peak_attention"] == pytest.approx(1.0)
    with torch.no_grad():
        attn.in_proj_weight[: 2 * width] = 30 * torch.randn(2 * width, width)
    specific = pooler_diagnostic(model, images, batch_size=2)
    assert specific["pooled_cosine"] < 0.99 and specific["attention_entropy"] < 0.9
    assert specific["peak_attention"] > 2
