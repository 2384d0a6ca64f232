"""The evaluation set: images with their caption and labelled boxes, read from a dataset manifest.

Any data prep output works, so every source data prep reads is an evaluation source too: a
JSON/Parquet list of image–caption pairs (retrieval, the ShareGPT4V-1k / Urban1k / DCI
protocol) or COCO-style annotations (box classification) go through data prep first, which
validates them and records what it cannot use (``docs/evaluation.md``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipeline.config import BadInput, ConfigError
from pipeline.schema import Sample
from pipeline.shards import load_manifest
from pipeline.shards.reader import read_samples

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class EvalImage:
    id: str
    jpg: bytes  # decoded per batch, so a large set costs its JPEG bytes, not its pixels
    width: int
    height: int
    caption: str
    boxes: list[Box]  # pixels of the stored image
    labels: list[str]  # parallel to boxes: the region's label, else the text of its first phrase
    queries: tuple[str, ...] = ()  # its texts at every level, caption, sentences, phrases: the pooler's


def load_eval_set(data: str, shards: Sequence[str] = (), max_images: int = 0) -> list[EvalImage]:
    """The first ``max_images`` (0: all) images of the dataset's shards (all, or those named), in
    manifest order. A sample that does not parse is logged and left out, as in training."""
    manifest = load_manifest(data)
    names = {s.name for s in manifest.shards}
    unknown = sorted(set(shards) - names)
    if unknown:
        raise ConfigError(f"shards: {unknown[0]!r} is not a shard of {manifest.root}")
    urls = [s.url for s in manifest.shards if not shards or s.name in shards]
    images = []
    for image in _images(urls):
        images.append(image)
        if len(images) == max_images:
            break
    if not images:
        raise BadInput(
            f"data: no usable image in {data} (no samples, or none that parse: see the warnings above)"
        )
    return images


def _images(urls: list[str]) -> Iterator[EvalImage]:
    def log_and_go_on(exn: Exception) -> bool:
        log.warning("skipping unreadable data: %r", exn)
        return True

    for url in urls:
        for raw in read_samples(url, handler=log_and_go_on):
            try:
                sample = Sample.parse(raw["json"])
                yield _eval_image(sample, raw["jpg"])
            except (KeyError, ValueError, RecursionError) as e:
                log.warning("skipping sample %s of %s: %r", raw.get("__key__"), url, e)


def _eval_image(sample: Sample, jpg: bytes) -> EvalImage:
    first_phrase: dict[int, str] = {}
    for phrase in sample.phrases:
        if phrase.region is not None:
            first_phrase.setdefault(phrase.region, phrase.text)
    boxes, labels = [], []
    for i, region in enumerate(sample.regions):
        label = region.label or first_phrase.get(i, "")
        if label:
            boxes.append(region.box)
            labels.append(label)
    queries = (sample.caption, *sample.sentences, *(p.text for p in sample.phrases))
    return EvalImage(sample.id, jpg, sample.width, sample.height, sample.caption, boxes, labels, queries)


IMAGES_AT_ONCE = 256  # benchmark images whose bytes are held at once while embedding


def image_file(path: Path, boxes: Sequence[Box] = ()) -> EvalImage:
    """A benchmark's image file, with ``boxes`` in its pixels. It is decoded once here, at an
    eighth of its size where the format allows: one that does not decode is a one-line
    ``BadInput`` naming it, not a traceback from the middle of embedding."""
    jpg = path.read_bytes()
    try:
        with Image.open(io.BytesIO(jpg)) as img:
            width, height = img.size
            img.draft("RGB", (max(width // 8, 1), max(height // 8, 1)))
            img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadInput(f"benchmarks: image {path} cannot be decoded ({e})") from None
    return EvalImage(path.name, jpg, width, height, "", list(boxes), [""] * len(boxes))
