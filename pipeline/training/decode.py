"""One raw sample → one :class:`Example` (see :mod:`pipeline.training.data`): the bytes a shard
delivers, read but never decoded, then decoded one at a time into an image tensor, the slot texts
and the grounded regions. A sample that cannot be used raises :class:`BadSample`, naming why."""

from __future__ import annotations

import itertools
import logging
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from pipeline.batch import Box
from pipeline.models.transform import model_input_image, random_resized_crop
from pipeline.schema import Phrase, Sample, SchemaError
from pipeline.shards.reader import read_samples
from pipeline.text.concepts import select
from pipeline.training.config import DataConfig
from pipeline.training.shard_plan import Piece, stream_seed

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], torch.Tensor]

SKIP = "__skip__"  # marks a placeholder for a sample its shard failed to deliver


def read_piece(piece: Piece) -> Iterator[dict[str, Any]]:
    """The piece's raw samples. Samples the shard fails to deliver (unreadable, truncated, shorter
    than its manifest says) become placeholders: stream positions stay a function of the manifest."""
    errors: list[Exception] = []

    def stop_reading(exn: Exception) -> bool:
        errors.append(exn)
        return False

    delivered = 0
    for sample in itertools.islice(read_samples(piece.url, handler=stop_reading), piece.start, piece.stop):
        delivered += 1
        yield sample
    missing = piece.stop - piece.start - delivered
    if missing:
        why = repr(errors[-1]) if errors else "the shard ended early"
        log.warning(
            "shard %s: samples %d..%d unreadable (%s); skipping and counting %d samples",
            piece.url,
            piece.start + delivered,
            piece.stop - 1,
            why,
            missing,
        )
        for i in range(piece.start + delivered, piece.stop):
            yield {"__key__": f"#{i}", "__url__": piece.url, SKIP: "shard_unreadable"}


class BadSample(Exception):
    """A raw sample that cannot be used; ``reason`` is what :attr:`Loader.skipped` counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Example:
    image: torch.Tensor  # [3, S, S]
    texts: list[str]  # caption, sentences, phrases
    regions: list[tuple[Box, int]]  # (box in model-input pixels, index into texts)


def select_texts(
    sample: Sample, cfg: DataConfig, view: Box, image_size: int, rng: random.Random
) -> tuple[list[str], list[tuple[Box, int]]]:
    """The slot texts (``cfg.texts`` says which) and the regions of the kept phrases that have
    one (the first R) in model-input pixels: ``view`` (stored pixels) is what the model sees,
    boxes are cut to it, and a box left under a pixel is no region."""
    if cfg.texts == "sampled":
        caption, sentences, phrases = sampled_texts(sample, cfg, rng)
    else:
        caption, sentences = sample.caption, sample.sentences[: cfg.num_sentences]
        phrases = sample.phrases[: cfg.num_phrases]
    first_phrase = 1 + len(sentences)
    regions = []
    for i, phrase in enumerate(phrases):
        if phrase.region is not None:
            box = to_view(sample.regions[phrase.region].box, view, image_size)
            if box is not None:
                regions.append((box, first_phrase + i))
    return [caption, *sentences, *(p.text for p in phrases)], regions[: cfg.num_regions]


def sampled_texts(sample: Sample, cfg: DataConfig, rng: random.Random) -> tuple[str, list[str], list[Phrase]]:
    """β-CLIP's per-read texts (``datasets.py``): S sentences drawn without replacement (all, in
    order, when there are fewer), the caption slot those joined with ". " (``text.rules: bclip``
    stores sentences as its split on ". " leaves them), and their phrases in its
    ``concepts_minimal`` order (``text.concepts.select``)."""
    n = len(sample.sentences)
    drawn = rng.sample(range(n), cfg.num_sentences) if n >= cfg.num_sentences else list(range(n))
    sentences = [sample.sentences[i] for i in drawn]
    caption = ". ".join(sentences)
    return caption, sentences, select(sample.phrases, drawn, cfg.num_phrases)


def to_view(box: Box, view: Box, image_size: int) -> Box | None:
    """A stored-pixel box in the model input showing ``view``: cut to it, then scaled; None when
    less than a pixel of it is left."""
    vx0, vy0, vx1, vy1 = view
    fx, fy = image_size / (vx1 - vx0), image_size / (vy1 - vy0)
    x0, y0 = (max(box[0], vx0) - vx0) * fx, (max(box[1], vy0) - vy0) * fy
    x1, y1 = (min(box[2], vx1) - vx0) * fx, (min(box[3], vy1) - vy0) * fy
    return (x0, y0, x1, y1) if x1 - x0 >= 1 and y1 - y0 >= 1 else None


def read_rng(cfg: DataConfig, epoch: int, key: str) -> random.Random:
    """The randomness of one read of one sample (its sentences, its crop): a function of the seed,
    the epoch and the sample, so a resumed run, any rank or worker, draws the same."""
    return random.Random(stream_seed(cfg.seed, epoch, zlib.crc32(key.encode())))


def decode(
    raw: dict[str, Any], cfg: DataConfig, image_size: int, transform: Transform, epoch: int = 0
) -> Example:
    """Raises :class:`BadSample` for anything wrong with the bytes; any exception parsing
    untrusted bytes is bad data, hence the broad catches, one per stage to name the reason."""
    if SKIP in raw:
        raise BadSample(raw[SKIP])
    if "jpg" not in raw or "json" not in raw:
        raise BadSample("missing_file", f"has {sorted(k for k in raw if not k.startswith('__'))}")
    try:
        sample = Sample.parse(raw["json"])
    except SchemaError as e:
        raise BadSample("bad_sample", repr(e)) from e
    except Exception as e:
        raise BadSample("bad_json", repr(e)) from e
    rng = read_rng(cfg, epoch, str(raw.get("__key__", "")))
    stored = (sample.width, sample.height)
    view = random_resized_crop(stored, cfg.crop_scale, rng) if cfg.crop_scale else (0, 0, *stored)
    try:
        img, size = model_input_image(raw["jpg"], image_size, view, draft=True)
    except Exception as e:
        raise BadSample("bad_image", repr(e)) from e
    if size != stored:
        raise BadSample("bad_sample", f"jpg is {size[0]}x{size[1]}, json says {sample.width}x{sample.height}")
    texts, regions = select_texts(sample, cfg, view, image_size, rng)
    return Example(transform(img), texts, regions)
