"""Decoded examples → one batch's tensors (see :mod:`pipeline.training.data`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields

import torch

from pipeline.batch import Batch
from pipeline.training.config import DataConfig
from pipeline.training.decode import Example

Tokenizer = Callable[[list[str]], torch.Tensor]


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
