"""The plan of an epoch (see :mod:`pipeline.training.data`): which raw samples make up each stream
of each epoch. Pure functions of the manifests, the seed and the epoch, so every rank and worker
computes the same plan without talking to the others."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
