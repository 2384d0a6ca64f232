"""The ``detector`` grounder: an open-vocabulary detector (OWLv2, through Hugging Face
``transformers``) looks for each noun-chunk phrase of a caption in its image.

Every query phrase takes its best box (per-phrase top-1) when the score clears the threshold;
phrases whose boxes overlap that much describe one object and share one region (greedy NMS
that merges instead of dropping). Only noun chunks are queries, for the reason the
``annotations`` rule never links relation or spatial phrases (docs/text_and_grounding.md).

The post-processing is pure functions of the model's outputs; ``transformers`` is imported
only when a detector is built, so the rest of the pipeline does not pay for it.
"""

from __future__ import annotations

import functools
import logging

import torch
from torchvision.ops import box_iou, nms

from pipeline.config import ConfigError
from pipeline.device import pick_device
from pipeline.grounding.base import Grounding, GroundingRequest
from pipeline.grounding.config import DetectorConfig
from pipeline.schema import Region, clean_box
from pipeline.text.lexeme import Lexeme

log = logging.getLogger(__name__)

ARCHITECTURES = ("owlv2",)  # model_type values whose outputs the post-processing below understands
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DetectorGrounder:
    name = "detector"
    needs_image = True

    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.model_config, self.processor = _load_config_and_processor(cfg)  # cheap; fails fast
        self.device = pick_device("auto")
        self.dtype = DTYPES.get(cfg.dtype) or (torch.float16 if self.device.type == "cuda" else torch.float32)

    @functools.cached_property
    def model(self):
        """The weights load on first use: the driver builds a grounder only for its provenance."""
        from transformers import AutoModelForZeroShotObjectDetection

        model = AutoModelForZeroShotObjectDetection.from_pretrained(
            self.cfg.model, revision=self.cfg.revision, dtype=self.dtype
        )
        log.info("detector %s on %s (%s)", self.cfg.model, self.device, self.dtype)
        return model.to(self.device).eval()

    def ground(self, requests: list[GroundingRequest]) -> list[Grounding]:
        queries = [query_phrases(r.lexemes, self.cfg.max_queries) for r in requests]
        groundings = [Grounding([], [None] * len(r.phrases)) for r in requests]
        todo = [i for i, q in enumerate(queries) if q]  # an image with nothing to look for costs nothing
        for start in range(0, len(todo), self.cfg.batch_size):
            chunk = todo[start : start + self.cfg.batch_size]
            logits, boxes = self.detect(
                [requests[i].image for i in chunk],
                [[requests[i].phrases[p].text for p in queries[i]] for i in chunk],
            )
            for k, i in enumerate(chunk):  # queries beyond an image's own are padding: cut off
                groundings[i] = ground_detections(
                    requests[i],
                    queries[i],
                    logits[k, :, : len(queries[i])],
                    boxes[k],
                    self.cfg.score_threshold,
                    self.cfg.nms_iou,
                )
        return groundings

    @torch.inference_mode()
    def detect(self, images: list, texts: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: logits (images, boxes, max queries) and boxes (images, boxes, 4) as
        OWLv2 gives them (cx, cy, w, h relative to the padded square), float32 on the CPU."""
        inputs = self.processor(
            images=images, text=texts, return_tensors="pt", truncation=True, device=self.device
        )  # OWLv2's text encoder has 16 positions
        out = self.model(**inputs.to(self.device, dtype=self.dtype))
        return out.logits.float().cpu(), out.pred_boxes.float().cpu()

    def provenance(self) -> dict:
        return {
            "name": self.name,
            "model": self.cfg.model,
            "revision": self.cfg.revision,
            "commit": getattr(self.model_config, "_commit_hash", None),
            "architecture": self.model_config.model_type,
            "queries": "noun chunks, reading order",
            "max_queries": self.cfg.max_queries,
            "score_threshold": self.cfg.score_threshold,
            "nms_iou": self.cfg.nms_iou,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def _load_config_and_processor(cfg: DetectorConfig):
    try:
        from transformers import AutoConfig, AutoProcessor
    except ImportError as e:
        raise ConfigError("grounding.name: detector needs transformers: pip install '.[detector]'") from e
    key = "grounding.detector.model"
    try:
        config = AutoConfig.from_pretrained(cfg.model, revision=cfg.revision)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: cannot load {cfg.model!r}: {e}") from e
    if config.model_type not in ARCHITECTURES:
        raise ConfigError(
            f"{key}: {cfg.model!r} is a {config.model_type!r} model; supported: {', '.join(ARCHITECTURES)}"
        )
    try:
        return config, AutoProcessor.from_pretrained(cfg.model, revision=cfg.revision)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: cannot load the processor of {cfg.model!r}: {e}") from e


def query_phrases(lexemes: list[Lexeme | None], max_queries: int) -> list[int]:
    """Indices of the phrases sent as queries: those with a lexeme (noun chunks), the first
    ``max_queries``."""
    return [i for i, lexeme in enumerate(lexemes) if lexeme is not None][:max_queries]


def ground_detections(
    request: GroundingRequest,
    queries: list[int],
    logits: torch.Tensor,
    boxes: torch.Tensor,
    score_threshold: float,
    nms_iou: float,
) -> Grounding:
    """One image's detections → regions and phrase links.

    ``logits`` (boxes, len(queries)) and ``boxes`` (boxes, 4) are the model's outputs for this
    image. Each query phrase takes its best box; it links when the score (4 decimals) is at least
    ``score_threshold`` and the box (0.01 px), clipped to the image, is usable (``schema.clean_box``).
    Linked boxes overlapping more than ``nms_iou`` merge into the best-scored one's region,
    labelled with that phrase. Regions are in the reading order of the first phrase they serve.
    """
    scores, best = best_boxes(logits, boxes)
    best = pixel_boxes(best, request.width, request.height)
    found = []  # (phrase index, box, score) of every phrase that links
    for phrase, score, box in zip(queries, scores.tolist(), best.tolist()):
        clean, _ = clean_box([round(v, 2) for v in box], request.width, request.height)
        if clean is not None and round(score, 4) >= score_threshold:
            found.append((phrase, clean, round(score, 4)))
    links: list[int | None] = [None] * len(request.phrases)
    if not found:
        return Grounding([], links)
    owners = merge_overlaps(torch.tensor([f[1] for f in found]), torch.tensor([f[2] for f in found]), nms_iou)
    regions: list[Region] = []
    region_of: dict[int, int] = {}
    for (phrase, _, _), owner in zip(found, owners):
        if owner not in region_of:
            region_of[owner] = len(regions)
            owner_phrase, box, score = found[owner]
            regions.append(Region(box, score, DetectorGrounder.name, request.phrases[owner_phrase].text))
        links[phrase] = region_of[owner]
    return Grounding(regions, links)


def best_boxes(logits: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's top-1: its score (sigmoid of the best logit) and box; (Q,) and (Q, 4)."""
    best = logits.argmax(dim=0)
    return torch.sigmoid(logits[best, torch.arange(logits.shape[1])]), boxes[best]


def pixel_boxes(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """OWLv2 boxes → (x0, y0, x1, y1) in pixels of the image. OWLv2 pads the image at the bottom
    and right to a square before resizing, so its coordinates are relative to that square's side."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * max(width, height)


def merge_overlaps(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """Greedy NMS that keeps the losers: for each box, the index of the box that represents it,
    itself when kept, else the best-scored kept box overlapping it by more than ``iou_threshold``."""
    keep = nms(boxes, scores, iou_threshold)  # best score first
    owns = box_iou(boxes[keep], boxes) > iou_threshold
    owns[torch.arange(len(keep)), keep] = True
    return keep[owns.int().argmax(dim=0)].tolist()  # argmax: the first, i.e. best-scored, owner
