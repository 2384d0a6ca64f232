"""The training loader: dataset manifests → shuffled, decoded, fixed-shape :class:`Batch` es.

``iter(build_loader(...))`` is an endless stream for one rank, epoch after epoch. How it works:

**Plan.** Epoch ``e`` is one global order of shards, a pure function of ``(seed, e)`` and the
manifests: ``epochs`` mode permutes all shards (every sample once per epoch; datasets are simply
concatenated), ``resampled`` mode draws shards with replacement until the epoch is full, each
sample of dataset ``d`` with probability ∝ ``weights[d] / samples(d)``: dataset ``d`` supplies
the fraction ``weights[d] / sum(weights)`` of all samples, whatever its size. An epoch is the
first ``world_size × batches_per_epoch × batch_size`` samples of that order (the remainder is
dropped); rank ``r`` takes the ``r``-th contiguous slice. Slices are cut at sample, not shard,
boundaries (the manifest has every shard's count), so every rank yields exactly
``batches_per_epoch`` batches per epoch and ranks never share a sample within an epoch.

**Streams.** DataLoader workers hand out batches round robin, so with ``W`` workers batch ``g``
(counted from the start of training) comes from worker ``(g - start_batch) mod W``. Batch ``g``
is therefore defined by its *stream* ``g mod W``: within an epoch, each stream owns a contiguous
piece of the rank's slice, shuffles it with a buffer seeded by (seed, epoch, rank, stream), and
cuts it into batches. Worker ``i`` of a loader started at ``start_batch`` plays stream
``(start_batch + i) mod W``. Output depends on (seed, rank, world_size, workers) only.

**Exact resume.** ``start_batch=n`` skips whole epochs by arithmetic and, within the first
epoch, drops the stream's first ``k × batch_size`` *raw* samples after the shuffle buffer and
before any decoding (bytes are read, nothing is decoded or tokenised).

**Bad data.** A sample that cannot be used (corrupt JPEG, bad JSON, schema violation, missing
part) and every sample a shard fails to deliver (unreadable, truncated) is logged with its shard
URL and key and counted; its batch slot is filled with a copy of a good sample of the same batch.
Raw positions therefore never depend on decoding, which keeps resume exact. Each batch carries
its tally of skipped slots from the worker to the main process: :attr:`Loader.skipped`. Only a
batch with no usable sample at all raises: that is missing data, not a bad sample.

**Geometry.** The loader resizes the whole image to ``image_size × image_size`` (aspect ratio
not kept, nothing cropped, so every region stays in the picture) and scales boxes by the same
factors. ``transform`` must only convert and normalise (``ToTensor`` + ``Normalize``): a crop or
flip would silently misplace the boxes, and random colour augmentation would break exact resume.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.batch import Batch, Box
from pipeline.config import BadInput, ConfigError, UserError
from pipeline.models.transform import model_input_image, random_resized_crop
from pipeline.schema import Phrase, Sample
from pipeline.shards.manifest import ManifestError, load_manifest
from pipeline.shards.reader import read_samples
from pipeline.text.concepts import select
from pipeline.training.config import DataConfig

log = logging.getLogger(__name__)

Tokenizer = Callable[[list[str]], torch.Tensor]
Transform = Callable[[Image.Image], torch.Tensor]

_SKIP = "__skip__"  # marks a placeholder for a sample its shard failed to deliver


# ---------------------------------------------------------------------------------------------
# Plan: which raw samples make up each stream of each epoch (pure functions of the manifests)


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int
    dataset: int  # index into DataConfig.manifests


@dataclass(frozen=True)
class Piece:
    """Samples ``start..stop-1`` (in tar order) of one shard."""

    url: str
    start: int
    stop: int


def shard_probabilities(shards: Sequence[Shard], weights: Sequence[float]) -> np.ndarray:
    """P(draw shard s of dataset d) ∝ weights[d] / samples(d): each dataset's share of samples
    is its weight's share, whatever its size and however its shards are cut."""
    totals = Counter()
    for s in shards:
        totals[s.dataset] += s.samples
    p = np.array([weights[s.dataset] / totals[s.dataset] for s in shards])
    return p / p.sum()


def epoch_order(
    shards: Sequence[Shard], probs: np.ndarray | None, seed: int, epoch: int, need: int
) -> list[int]:
    """The epoch's global shard order, identical on every rank and worker: a permutation
    (``probs`` None: epochs mode) or draws with replacement until ``need`` samples are covered."""
    rng = np.random.default_rng([seed, epoch])
    if probs is None:
        return rng.permutation(len(shards)).tolist()
    sizes = [s.samples for s in shards]
    block = max(1, math.ceil(need / float(np.dot(probs, sizes))))
    order, total = [], 0
    while total < need:
        for i in rng.choice(len(shards), size=block, p=probs).tolist():
            order.append(i)
            total += sizes[i]
            if total >= need:
                break
    return order


def pieces(shards: Sequence[Shard], order: Sequence[int], start: int, stop: int) -> list[Piece]:
    """Samples ``start..stop-1`` of the concatenation of ``order``'s shards, per shard."""
    out, offset = [], 0
    for i in order:
        if offset >= stop:
            break
        n = shards[i].samples
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            out.append(Piece(shards[i].url, lo, hi))
        offset += n
    return out


def stream_batches(epoch: int, batches_per_epoch: int, streams: int, stream: int) -> range:
    """In-epoch indices of the batches of ``stream``: global batch g belongs to stream g mod W."""
    return range((stream - epoch * batches_per_epoch) % streams, batches_per_epoch, streams)


def stream_seed(*parts: int) -> int:
    """One int seed from several (``random.Random`` takes one), well mixed by SeedSequence."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# Raw samples: bytes out of the tar files, never decoded here


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
            yield {"__key__": f"#{i}", "__url__": piece.url, _SKIP: "shard_unreadable"}


# ---------------------------------------------------------------------------------------------
# Decoding: one raw sample → image tensor, slot texts, grounded regions


class BadSample(Exception):
    """A raw sample that cannot be used; ``reason`` is what :attr:`Loader.skipped` counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class NoUsableSample(BadInput, RuntimeError):
    """A batch none of whose samples can be used: missing or foreign data, not a bad sample (a
    RuntimeError too, as it was before it became a :class:`BadInput`)."""


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
    if _SKIP in raw:
        raise BadSample(raw[_SKIP])
    if "jpg" not in raw or "json" not in raw:
        raise BadSample("missing_file", f"has {sorted(k for k in raw if not k.startswith('__'))}")
    try:
        meta = json.loads(raw["json"])
    except Exception as e:
        raise BadSample("bad_json", repr(e)) from e
    try:
        sample = Sample.from_json(meta)
    except Exception as e:
        raise BadSample("bad_sample", repr(e)) from e
    rng = read_rng(cfg, epoch, str(raw.get("__key__", "")))
    stored = (sample.width, sample.height)
    view = random_resized_crop(stored, cfg.crop_scale, rng) if cfg.crop_scale else (0, 0, *stored)
    try:
        img, size = model_input_image(raw["jpg"], image_size, view)
    except Exception as e:
        raise BadSample("bad_image", repr(e)) from e
    if size != stored:
        raise BadSample("bad_sample", f"jpg is {size[0]}x{size[1]}, json says {sample.width}x{sample.height}")
    texts, regions = select_texts(sample, cfg, view, image_size, rng)
    return Example(transform(img), texts, regions)


def tokenize_once(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """``tokenizer(texts)``, tokenising each distinct string once: short phrases repeat across a
    batch's images, and tokenising is most of the loader's CPU time."""
    unique = list(dict.fromkeys(texts))
    row = {text: i for i, text in enumerate(unique)}
    return tokenizer(unique)[torch.tensor([row[text] for text in texts])]


def collate(examples: list[Example], tokenizer: Tokenizer, cfg: DataConfig) -> dict[str, torch.Tensor]:
    """A :class:`Batch` as a dict of tensors: what DataLoader can move between processes and pin."""
    batch = Batch.from_lists(
        torch.stack([e.image for e in examples]),
        [e.texts for e in examples],
        [e.regions for e in examples],
        functools.partial(tokenize_once, tokenizer),
        cfg.num_slots,
        cfg.num_regions,
    )
    return {f.name: getattr(batch, f.name) for f in fields(batch)}


# ---------------------------------------------------------------------------------------------
# The per-rank stream (runs in DataLoader workers) and the loader


class RankStream(IterableDataset):
    """Yields ``(batch fields, {reason: skipped slots})`` for one rank, endlessly."""

    def __init__(
        self,
        cfg: DataConfig,
        shards: list[Shard],
        batches_per_epoch: int,
        *,
        tokenizer: Tokenizer,
        transform: Transform,
        image_size: int,
        rank: int,
        world_size: int,
        start_batch: int,
    ):
        super().__init__()
        self.cfg, self.shards, self.batches_per_epoch = cfg, shards, batches_per_epoch
        self.tokenizer, self.transform, self.image_size = tokenizer, transform, image_size
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.probs = (
            shard_probabilities(shards, cfg.weights or [1.0] * len(cfg.manifests))
            if cfg.mode == "resampled"
            else None
        )

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, int]] | tuple[None, UserError]]:
        """A :class:`UserError` (data that cannot train) is yielded as ``(None, error)``: raised in a
        worker process, DataLoader would wrap its one line in a traceback (:class:`Loader` raises it)."""
        info = get_worker_info()
        worker, streams = (info.id, info.num_workers) if info else (0, 1)
        try:
            yield from self.stream((self.start_batch + worker) % streams, streams)
        except UserError as e:
            yield None, e

    def stream(self, stream: int, streams: int) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, int]]]:
        """Stream ``stream`` of ``streams``, from the first of its batches at or after start_batch."""
        size, bpe = self.cfg.batch_size, self.batches_per_epoch
        first_epoch, first_index = divmod(self.start_batch, bpe)
        for epoch in itertools.count(first_epoch):
            mine = stream_batches(epoch, bpe, streams, stream)
            before = sum(len(stream_batches(epoch, bpe, streams, s)) for s in range(stream))
            start = (self.rank * bpe + before) * size
            order = epoch_order(self.shards, self.probs, self.cfg.seed, epoch, self.world_size * bpe * size)
            raw = itertools.chain.from_iterable(
                map(read_piece, pieces(self.shards, order, start, start + len(mine) * size))
            )
            rng = random.Random(stream_seed(self.cfg.seed, epoch, self.rank, stream))
            shuffled = wds.shuffle(self.cfg.shuffle_buffer, self.cfg.shuffle_buffer, rng=rng)(raw)
            skip = len(range(mine.start, first_index, streams)) if epoch == first_epoch else 0
            rest = itertools.islice(shuffled, skip * size, None)
            while chunk := list(itertools.islice(rest, size)):
                yield self.make_batch(chunk, epoch)

    def make_batch(
        self, chunk: list[dict[str, Any]], epoch: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Decode a chunk; fill the slots of bad samples with copies of the good ones, in order."""
        decoded: list[Example | None] = []
        skipped: Counter[str] = Counter()
        first_error = None
        for raw in chunk:
            try:
                decoded.append(decode(raw, self.cfg, self.image_size, self.transform, epoch))
            except BadSample as e:
                if _SKIP not in raw:  # placeholders were logged once per shard
                    log.warning("skipping sample %s of %s: %s", raw.get("__key__"), raw.get("__url__"), e)
                skipped[e.reason] += 1
                first_error = first_error or e
                decoded.append(None)
        good = [e for e in decoded if e is not None]
        if not good:
            raise NoUsableSample(
                f"data.manifests: no usable sample in a batch of {len(chunk)} ({dict(skipped)}), e.g. "
                f"{chunk[0].get('__key__')} of {chunk[0].get('__url__')}: {str(first_error)[:200]} "
                "(is the data reachable, and data prep output of this schema?)"
            )
        spare = itertools.cycle(good)
        examples = [e if e is not None else next(spare) for e in decoded]
        return collate(examples, self.tokenizer, self.cfg), dict(skipped)


class Loader:
    """One rank's endless stream of :class:`Batch` es; each ``iter()`` starts at ``start_batch``.

    ``skipped`` counts, per reason, the sample slots of the batches yielded so far that had to be
    filled because their sample was bad (batches skipped by ``start_batch`` are not decoded, so
    not counted).
    """

    def __init__(self, stream: RankStream, num_samples: int, workers: int, pin_memory: bool):
        self.stream, self.num_samples = stream, num_samples
        self.workers, self.pin_memory = workers, pin_memory
        self.skipped: Counter[str] = Counter()

    @property
    def batches_per_epoch(self) -> int:
        """Batches per rank per epoch: num_samples // (batch_size × world_size)."""
        return self.stream.batches_per_epoch

    @property
    def start_batch(self) -> int:
        return self.stream.start_batch

    def __iter__(self) -> Iterator[Batch]:
        loader = DataLoader(
            self.stream, batch_size=None, num_workers=self.workers, pin_memory=self.pin_memory
        )
        for tensors, skipped in loader:
            if tensors is None:
                raise skipped  # a UserError from the stream (RankStream.__iter__)
            self.skipped.update(skipped)
            yield Batch(**tensors)


def build_loader(
    cfg: DataConfig,
    *,
    tokenizer: Tokenizer,
    transform: Transform,
    image_size: int,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    pin_memory: bool = False,
) -> Loader:
    """The loader of rank ``rank`` of ``world_size``, from global batch ``start_batch`` on.

    ``tokenizer``: strings → [N, L] token ids (``open_clip.get_tokenizer(name, context_length)``);
    ``transform``: an ``image_size``² PIL image → [3, image_size, image_size], colour only (see
    the module docstring). Fails here, naming the key, on anything that would fail later.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if start_batch < 0:
        raise ValueError(f"start_batch: must be >= 0, got {start_batch}")
    manifests = [load_manifest(path) for path in cfg.manifests]
    for i, m in enumerate(manifests):
        if m.num_samples == 0:
            raise BadInput(f"data.manifests[{i}]: {m.root} has no samples")
        if sum(s.samples for s in m.shards) != m.num_samples:
            raise ManifestError(f"{m.root}: shard counts do not add up to totals.written={m.num_samples}")
    shards = [Shard(s.url, s.samples, d) for d, m in enumerate(manifests) for s in m.shards if s.samples]
    num_samples = sum(m.num_samples for m in manifests)
    batches_per_epoch = num_samples // (cfg.batch_size * world_size)
    if batches_per_epoch == 0:
        raise ConfigError(
            f"data.batch_size: {cfg.batch_size} × {world_size} ranks is more than the {num_samples} samples"
        )
    streams = max(cfg.workers, 1)
    if cfg.mode == "epochs" and len(shards) < world_size * streams:
        raise ConfigError(
            f"data.workers: {len(shards)} shards cannot give each of {world_size} rank(s) × "
            f"{streams} worker(s) a shard of its own; lower data.workers or set "
            "data.mode=resampled"
        )
    _check_transform(transform, image_size)
    stream = RankStream(
        cfg,
        shards,
        batches_per_epoch,
        tokenizer=tokenizer,
        transform=transform,
        image_size=image_size,
        rank=rank,
        world_size=world_size,
        start_batch=start_batch,
    )
    return Loader(stream, num_samples, cfg.workers, pin_memory)


def _check_transform(transform: Transform, image_size: int) -> None:
    out = transform(Image.new("RGB", (image_size, image_size)))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (3, image_size, image_size):
        raise ValueError(
            f"transform: returned {getattr(out, 'shape', type(out))} for a {image_size}² "
            f"image, expected [3, {image_size}, {image_size}]: the loader resizes, the "
            "transform only converts and normalises"
        )
