"""An export is an open_clip model folder: plain open_clip, in a process that never imports
``pipeline``, loads it with ``local-dir:`` and embeds as our evaluation does."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pipeline.config import UserError
from pipeline.eval.data import EvalImage
from pipeline.eval.model import embed_images, embed_texts, load_model
from pipeline.models import TINY_MODEL, FineGrainedCLIP, ModelConfig
from pipeline.models.backbone import create_backbone
from pipeline.models.loading import load_exported
from pipeline.training.export import write_export

TEXTS = ["a red circle above two blue squares", "a long caption " * 40, "a cat"]
SIZES = [(200, 150), (97, 211), (128, 128)]  # not square; under twice the input: decoded in full

PLAIN_OPEN_CLIP = """
import json, sys
import open_clip, torch
from PIL import Image
export, images, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + export)
tokenizer = open_clip.get_tokenizer("local-dir:" + export)
with torch.no_grad():
    image = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in images]), normalize=True)
    text = model.encode_text(tokenizer(texts), normalize=True)
assert not any(name.startswith("pipeline") for name in sys.modules)
print(json.dumps({"image": image.tolist(), "text": text.tolist(), "context": tokenizer.context_length}))
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(name=TINY_MODEL, pretrained=None, context_length=248)
    model = FineGrainedCLIP(cfg, with_pooler=True, with_region_head=False)
    out = tmp_path_factory.mktemp("export")
    write_export(model, cfg, out, "random init")
    return out


def test_plain_open_clip_embeds_an_export_as_our_eval_does(export, tmp_path):
    paths, images = [], []
    for i, (w, h) in enumerate(SIZES):
        pixels = torch.randint(
            0, 256, (h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)
        )
        buffer = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buffer, "JPEG", quality=90)
        (tmp_path / f"{i}.jpg").write_bytes(buffer.getvalue())
        paths.append(str(tmp_path / f"{i}.jpg"))
        images.append(EvalImage(str(i), buffer.getvalue(), w, h, caption="", boxes=[], labels=[]))
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_OPEN_CLIP, str(export), json.dumps(paths), json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: `pipeline` cannot be imported by accident
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    theirs = json.loads(plain.stdout.strip().splitlines()[-1])
    assert theirs["context"] == 248

    ours = load_model(str(export), torch.device("cpu"))
    torch.testing.assert_close(
        torch.tensor(theirs["image"]), embed_images(ours, images, batch_size=8).image, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(torch.tensor(theirs["text"]), embed_texts(ours, TEXTS), atol=1e-5, rtol=0)


def test_pretrained_from_an_export_keeps_its_context(export):
    """``model.pretrained=EXPORT`` (the folder or its weights file) loads the 248 positions as
    trained; asking for fewer than it was trained with is refused, naming the key."""
    trained = json.loads((export / "open_clip_config.json").read_text())
    for pretrained in (str(export), str(export / "open_clip_model.safetensors")):
        clip = create_backbone(ModelConfig(name=TINY_MODEL, pretrained=pretrained, context_length=248))
        again = FineGrainedCLIP(
            ModelConfig(name=TINY_MODEL, pretrained=None, context_length=248), False, False
        )
        assert clip.context_length == 248 and trained["model_cfg"]["text_cfg"]["context_length"] == 248
        expected = load_model(str(export), torch.device("cpu")).clip.positional_embedding
        assert torch.equal(clip.positional_embedding, expected)
        assert not torch.equal(again.clip.positional_embedding, expected)
    with pytest.raises(ValueError, match="model.context_length: 77, but model.pretrained="):
        create_backbone(ModelConfig(name=TINY_MODEL, pretrained=str(export), context_length=77))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "file, damage",
    [
        ("open_clip_model.safetensors", _truncate),
        ("open_clip_model.safetensors", lambda p: p.write_bytes(b"\xff" * 64)),
        ("open_clip_model.safetensors", lambda p: save_file({"visual.proj": torch.zeros(2, 2)}, p)),
        ("open_clip_config.json", _truncate),
        ("open_clip_config.json", lambda p: p.write_text("[]")),
        ("open_clip_config.json", lambda p: p.write_text('{"model_cfg": {}, "preprocess_cfg": {}}')),
        ("open_clip_config.json", lambda p: p.write_bytes(b'{"\xff": 1}')),
        ("open_clip_config.json", lambda p: p.unlink()),
        ("heads.pt", _truncate),
        ("heads.pt", lambda p: p.write_bytes(b"not a zip")),
        ("heads.pt", lambda p: torch.save({"pooler.scale": "not a tensor"}, p)),
        ("heads.pt", lambda p: torch.save({"evil.weight": torch.zeros(1)}, p)),
        ("heads.pt", lambda p: torch.save({"pooler.scale": torch.zeros(3, 3)}, p)),
        ("model_config.json", _truncate),
        ("model_config.json", lambda p: p.write_text('{"name": 5}')),
        ("model_config.json", lambda p: p.write_text("null")),
    ],
)
def test_an_unreadable_export_file_is_one_line_naming_it(export, tmp_path, file, damage):
    """Whatever is wrong with an export's file (truncated, corrupt, another model's), loading it
    is a :class:`UserError` naming the file: what ``eval --checkpoint`` prints as one line."""
    bad = tmp_path / "export"
    shutil.copytree(export, bad)
    damage(bad / file)
    loaders = [lambda: load_model(str(bad), torch.device("cpu"))]
    if file.startswith("open_clip"):
        loaders += [
            lambda: load_exported(bad),
            lambda: create_backbone(ModelConfig(name=TINY_MODEL, pretrained=str(bad), context_length=248)),
        ]
    for load in loaders:
        with pytest.raises(UserError) as refused:
            load()
        message = str(refused.value)
        assert len(message.splitlines()) == 1 and str(bad) in message, message
        assert file in message or "export" in message, message
