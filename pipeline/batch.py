"""The one training batch layout: what the loader produces and what models and objectives read.

Per image ``b`` of a batch of ``B`` (``K`` text slots, ``R`` region slots, ``L`` token context):

==================  =================  ==========================================================
field               shape / dtype      meaning
==================  =================  ==========================================================
``images``          [B, 3, H, W] float model input, already resized and normalised by the loader
``tokens``          [B, K, L] long     tokenised text slots: slot 0 is the caption (the global
                                       text), then up to S sentences, then up to P phrases;
                                       β-CLIP uses K = 36 = 1 + 5 + 30, CLIP alone K = 1
``token_mask``      [B, K] bool        which slots hold a text; slot 0 always does
``text_ids``        [B, K] long        :func:`text_id` of each slot's string (0 where padded);
                                       equal ids mean equal strings, so identical phrases of
                                       different images are not treated as negatives
``boxes``           [B, R, 4] float    region boxes (x0, y0, x1, y1) in pixels of ``images``
                                       (the loader scales stored boxes along with the image)
``region_slot``     [B, R] long        the text slot (a phrase) each region is grounded to
``region_mask``     [B, R] bool        which region slots hold a region
==================  =================  ==========================================================

A region that serves several phrases appears once per phrase. Padded entries may hold anything
(zeros by convention): every consumer reads them through the masks. ``K``, ``R`` and ``L`` are
fixed per run so that every rank's batch has the same shapes (the objectives all-gather them).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Box = tuple[float, float, float, float]


def text_id(text: str) -> int:
    """A stable 63-bit id of a text slot's string (case and surrounding space ignored), never 0."""
    digest = hashlib.blake2b(text.strip().lower().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1 or 1


@dataclass
class Batch:
    images: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor
    text_ids: torch.Tensor
    boxes: torch.Tensor
    region_slot: torch.Tensor
    region_mask: torch.Tensor

    def __post_init__(self) -> None:
        b, k, _ = self.tokens.shape
        r = self.boxes.shape[1]
        expected = {
            "images": (b, 3),
            "token_mask": (b, k),
            "text_ids": (b, k),
            "boxes": (b, r, 4),
            "region_slot": (b, r),
            "region_mask": (b, r),
        }
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape[: len(shape)])
            if actual != shape:
                raise ValueError(f"batch.{name}: shape {actual} does not match {shape} (B={b}, K={k}, R={r})")

    @property
    def captions(self) -> torch.Tensor:
        """[B, L] tokens of each image's caption (slot 0)."""
        return self.tokens[:, 0]

    def to(self, device: torch.device | str) -> Batch:
        return dataclasses.replace(
            self,
            **{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in dataclasses.fields(self)},
        )

    @classmethod
    def from_lists(
        cls,
        images: torch.Tensor,
        texts: Sequence[Sequence[str]],
        regions: Sequence[Sequence[tuple[Box, int]]],
        tokenizer: Callable[[list[str]], torch.Tensor],
        num_slots: int,
        num_regions: int,
    ) -> Batch:
        """Pad per-image lists into a batch.

        ``texts[b]`` is image b's caption followed by its sentences and phrases; ``regions[b]``
        holds (box, index into texts[b]) pairs; ``tokenizer`` maps strings to [N, L] token ids (an
        ``open_clip.get_tokenizer(...)``). Lists longer than the slots are an error: choosing which
        texts and regions to keep is the loader's decision, not something to do silently here.
        """
        batch_size = len(texts)
        if len(regions) != batch_size or images.shape[0] != batch_size:
            raise ValueError(
                f"batch: {images.shape[0]} images, {batch_size} text lists, {len(regions)} region lists"
            )
        for b, (slot_texts, image_regions) in enumerate(zip(texts, regions)):
            if not 1 <= len(slot_texts) <= num_slots:
                raise ValueError(f"batch: image {b} has {len(slot_texts)} texts, needs 1..{num_slots}")
            if len(image_regions) > num_regions:
                raise ValueError(f"batch: image {b} has {len(image_regions)} regions, room for {num_regions}")
            for _, slot in image_regions:
                if not 0 < slot < len(slot_texts):
                    raise ValueError(
                        f"batch: image {b} has a region grounded to slot {slot}, "
                        f"which is not one of its texts 1..{len(slot_texts) - 1}"
                    )

        flat = tokenizer([t for slot_texts in texts for t in slot_texts])
        tokens = flat.new_zeros(batch_size, num_slots, flat.shape[-1])
        token_mask = torch.zeros(batch_size, num_slots, dtype=torch.bool)
        text_ids = torch.zeros(batch_size, num_slots, dtype=torch.long)
        boxes = torch.zeros(batch_size, num_regions, 4)
        region_slot = torch.zeros(batch_size, num_regions, dtype=torch.long)
        region_mask = torch.zeros(batch_size, num_regions, dtype=torch.bool)
        start = 0
        for b, (slot_texts, image_regions) in enumerate(zip(texts, regions)):
            n = len(slot_texts)
            tokens[b, :n] = flat[start : start + n]
            token_mask[b, :n] = True
            text_ids[b, :n] = torch.tensor([text_id(t) for t in slot_texts])
            start += n
            for r, (box, slot) in enumerate(image_regions):
                boxes[b, r] = torch.tensor(box)
                region_slot[b, r] = slot
                region_mask[b, r] = True
        return cls(images, tokens, token_mask, text_ids, boxes, region_slot, region_mask)
