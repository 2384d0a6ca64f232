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

**Modules.** :mod:`~pipeline.training.shard_plan` makes the plan and the streams,
:mod:`~pipeline.training.decode` reads and decodes samples, :mod:`~pipeline.training.collate`
makes batches of them, :mod:`~pipeline.training.rank_stream` runs one rank's stream in the
DataLoader workers; this module builds the :class:`Loader` around it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import open_clip
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from pipeline.batch import Batch
from pipeline.config import BadInput, ConfigError
from pipeline.models import ModelConfig
from pipeline.models.backbone import image_stats
from pipeline.shards.manifest import ManifestError, load_manifest
from pipeline.training.collate import Tokenizer
from pipeline.training.config import DataConfig
from pipeline.training.decode import Transform
from pipeline.training.rank_stream import RankStream
from pipeline.training.shard_plan import Shard


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


def build_run_loader(
    data: DataConfig,
    model: ModelConfig,
    rank: int,
    world_size: int,
    start_batch: int,
    pin_memory: bool = False,
) -> Loader:
    """:func:`build_loader` with the tokenizer, input size and normalisation of ``model``'s
    backbone, read from its config: a loader needs no model built (nor downloaded)."""
    image_size, transform = model_input(model)
    return build_loader(
        data,
        tokenizer=open_clip.get_tokenizer(model.name, context_length=model.context_length),
        transform=transform,
        image_size=image_size,
        rank=rank,
        world_size=world_size,
        start_batch=start_batch,
        pin_memory=pin_memory,
    )


def model_input(model: ModelConfig) -> tuple[int, Transform]:
    """(side, transform) of the images the backbone of ``model`` takes: its open_clip config's
    image size, and the mean and std its weights were trained with (open_clip's defaults, OpenAI's,
    where they say none), as ``create_backbone`` gives them to ``visual``."""
    config = open_clip.get_model_config(model.name)
    if config is None:
        raise ConfigError(f"model.name: {model.name!r} is not an open_clip model")
    side = config["vision_cfg"]["image_size"]
    stats = {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD, **image_stats(model)}
    normalize = transforms.Normalize(stats["mean"], stats["std"])
    return side if isinstance(side, int) else side[0], transforms.Compose([transforms.ToTensor(), normalize])


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
    shards, num_samples = _shards(cfg)
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


def _shards(cfg: DataConfig) -> tuple[list[Shard], int]:
    """The non-empty shards of all the manifests, and their samples in all; a manifest that is
    empty or whose shard counts do not add up fails here, before any worker starts."""
    manifests = [load_manifest(path) for path in cfg.manifests]
    for i, m in enumerate(manifests):
        if m.num_samples == 0:
            raise BadInput(f"data.manifests[{i}]: {m.root} has no samples")
        if sum(s.samples for s in m.shards) != m.num_samples:
            raise ManifestError(f"{m.root}: shard counts do not add up to totals.written={m.num_samples}")
    shards = [Shard(s.url, s.samples, d) for d, m in enumerate(manifests) for s in m.shards if s.samples]
    return shards, sum(m.num_samples for m in manifests)


def _check_transform(transform: Transform, image_size: int) -> None:
    out = transform(Image.new("RGB", (image_size, image_size)))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (3, image_size, image_size):
        raise ValueError(
            f"transform: returned {getattr(out, 'shape', type(out))} for a {image_size}² "
            f"image, expected [3, {image_size}, {image_size}]: the loader resizes, the "
            "transform only converts and normalises"
        )
