"""clip_benchmark scores our export as our evaluation does: its own CLI, ``--model local-dir:EXPORT``,
on a folder in its Flickr30k layout (images and a Karpathy-split caption file, 5 captions each)."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.eval.data import EvalImage
from pipeline.eval.metrics import retrieval_recall
from pipeline.eval.model import embed_images, embed_texts, load_model
from pipeline.models import TINY_MODEL, FineGrainedCLIP, ModelConfig
from pipeline.training.export import write_export

REPO = Path(__file__).resolve().parents[1]
CLIP_BENCHMARK = REPO / ".venv/clip-benchmark-1.6.2"  # scripts/install.sh: its pins, beside ours
COLOURS = "red green blue yellow white black orange purple pink brown grey cyan".split()  # 12 > R@10
KS = (1, 5, 10)


def _flickr_folder(root: Path) -> tuple[list[EvalImage], list[str], list[int]]:
    """Twelve images with five captions each, not square and over twice the 128 px input, where a
    DCT-scaled decode would differ from clip_benchmark's full one."""
    images, captions, image_of_text = [], [], []
    lines = ["image,caption"]  # clip_benchmark skips the header line
    for i, colour in enumerate(COLOURS):
        w, h = 320 + 17 * i, 300 - 9 * i
        noise = torch.Generator().manual_seed(i)
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=noise)
        pixels[: h // 2, : w // 2] = torch.tensor([37 * i % 256, 91 * i % 256, 53 * i % 256])
        buffer = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buffer, "JPEG", quality=90)
        (root / f"{i}.jpg").write_bytes(buffer.getvalue())
        images.append(EvalImage(str(i), buffer.getvalue(), w, h, caption="", boxes=[], labels=[]))
        for j in range(5):
            caption = f"a {colour} square, photo {j}, with noise around it" + ", and more" * j
            lines.append(f"{i}.jpg,{caption}")
            captions.append(caption)
            image_of_text.append(i)
    (root / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    return images, captions, image_of_text


@pytest.mark.integration  # runs clip_benchmark's CLI in a process
def test_clip_benchmark_scores_our_export_as_our_eval_does(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(name=TINY_MODEL, pretrained=None, context_length=248)
    export = tmp_path / "export"
    write_export(FineGrainedCLIP(cfg, with_pooler=True, with_region_head=False), cfg, export, "random init")
    root = tmp_path / "flickr30k"
    root.mkdir()
    images, captions, image_of_text = _flickr_folder(root)

    out = tmp_path / "clip_benchmark.json"
    command = (
        f"-m clip_benchmark.cli eval --dataset flickr30k --task zeroshot_retrieval --dataset_root {root} "
        f"--model local-dir:{export} --pretrained '' --recall_k {' '.join(map(str, KS))} --no_amp "
        f"--num_workers 0 --batch_size 3 --output {out}"
    )
    run = subprocess.run(
        [sys.executable, *shlex.split(command)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: `pipeline` is not importable there
        env={**os.environ, "PYTHONPATH": str(CLIP_BENCHMARK)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads(out.read_text())["metrics"]

    model = load_model(str(export), torch.device("cpu"))
    ours = retrieval_recall(
        embed_images(model, images, batch_size=8).image,
        embed_texts(model, captions),
        KS,
        torch.tensor(image_of_text),
    )
    for k in KS:  # clip_benchmark: image retrieval is text-to-image, as fractions
        assert round(100 * theirs[f"image_retrieval_recall@{k}"], 2) == ours[f"t2i_R@{k}"]
        assert round(100 * theirs[f"text_retrieval_recall@{k}"], 2) == ours[f"i2t_R@{k}"]
    assert 0 < ours["t2i_R@1"] < 100 or 0 < ours["i2t_R@1"] < 100, ours  # not a trivial agreement
