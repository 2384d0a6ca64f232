"""One rank's endless stream of batches, run in DataLoader workers (see
:mod:`pipeline.training.data`): each worker plays one stream of the plan, reads its pieces,
shuffles, skips what a resumed run already trained on, and decodes and collates the rest."""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.config import BadInput, UserError, one_line
from pipeline.training.collate import Tokenizer, collate
from pipeline.training.config import DataConfig
from pipeline.training.decode import SKIP, BadSample, Example, Transform, decode, read_piece
from pipeline.training.shard_plan import (
    Shard,
    epoch_order,
    pieces,
    shard_probabilities,
    stream_batches,
    stream_seed,
)

log = logging.getLogger(__name__)


class NoUsableSample(BadInput):
    """A batch none of whose samples can be used: missing or foreign data, not a bad sample."""


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
                if SKIP not in raw:  # placeholders were logged once per shard
                    log.warning("skipping sample %s of %s: %s", raw.get("__key__"), raw.get("__url__"), e)
                skipped[e.reason] += 1
                first_error = first_error or e
                decoded.append(None)
        good = [e for e in decoded if e is not None]
        if not good:
            raise NoUsableSample(
                f"data.manifests: no usable sample in a batch of {len(chunk)} ({dict(skipped)}), e.g. "
                f"{chunk[0].get('__key__')} of {chunk[0].get('__url__')}: {one_line(first_error)} "
                "(is the data reachable, and data prep output of this schema?)"
            )
        spare = itertools.cycle(good)
        examples = [e if e is not None else next(spare) for e in decoded]
        return collate(examples, self.tokenizer, self.cfg), dict(skipped)
