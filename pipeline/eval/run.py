"""``evaluate``: every checkpoint on the same images and texts, then one report comparing them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pipeline.config import to_dict
from pipeline.eval import metrics
from pipeline.eval.config import EvalConfig, parse_checkpoint
from pipeline.eval.data import EvalImage, load_eval_set
from pipeline.eval.model import OPENCLIP_PREFIX, embed_images, embed_texts, export_folder, load_model
from pipeline.eval.report import ModelResult, write_report
from pipeline.lineage import make_lineage, read_lineage

log = logging.getLogger(__name__)


def evaluate(cfg: EvalConfig) -> Path:
    """Run every task for every checkpoint; returns the report folder."""
    device = torch.device(
        "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    checkpoints = [parse_checkpoint(entry) for entry in cfg.checkpoints]
    for _, spec in checkpoints:  # before any work: every checkpoint is there
        if not spec.startswith(OPENCLIP_PREFIX):
            export_folder(spec)
    images = load_eval_set(cfg.data, cfg.shards, cfg.max_images)
    labels = [label.lower() for im in images for label in im.labels]
    classes = sorted(set(labels))
    class_of = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([class_of[label] for label in labels], dtype=torch.long)
    trials, unparsed = metrics.make_trials(labels, cfg.attributes, cfg.num_negatives, cfg.seed)
    pairs = metrics.attribute_pairs(labels, cfg.attributes)
    label_texts = sorted({*classes, *(n for t in trials for n in t.negatives), *(p[2] for p in pairs)})
    log.info(
        "%d images, %d boxes, %d classes, %d FG-OVD trials (%d boxes' labels not parsed into %s)",
        len(images),
        len(labels),
        len(classes),
        len(trials),
        unparsed,
        "/".join(cfg.attributes),
    )

    results = []
    for name, spec in checkpoints:
        started = time.time()
        model = load_model(spec, device)
        result = _evaluate_model(name, spec, model, images, cfg, classes, targets, trials, pairs, label_texts)
        log.info("%s: %s (%.0f s)", result.name, result.headline(), time.time() - started)
        results.append(result)
        del model
    data = {
        "path": cfg.data,
        "images": len(images),
        "boxes": len(labels),
        "classes": len(classes),
        "fgovd_trials": len(trials),
        "fgovd_unparsed_boxes": unparsed,
        "chance": metrics.chance_levels(len(images), len(classes), trials, cfg.recall_ks),
    }
    lineage = {
        **make_lineage([cfg.data], to_dict(cfg)),
        "checkpoints": {r.name: _checkpoint_lineage(r.spec) for r in results},
    }
    return write_report(Path(cfg.out), cfg, data, results, images, classes, lineage)


def _checkpoint_lineage(spec: str) -> dict:
    if spec.startswith(OPENCLIP_PREFIX):
        return {"path": spec}
    try:
        return {"path": spec, **read_lineage(spec)}
    except FileNotFoundError:
        log.warning("%s records no lineage", spec)
        return {"path": spec}


def _evaluate_model(
    name, spec, model, images: list[EvalImage], cfg: EvalConfig, classes, targets, trials, pairs, label_texts
) -> ModelResult:
    embedded = embed_images(model, images, cfg.batch_size)
    captions = embed_texts(model, [im.caption for im in images])
    text = dict(zip(label_texts, embed_texts(model, [cfg.prompt.format(t) for t in label_texts])))
    class_emb = torch.stack([text[c] for c in classes])
    result = ModelResult(
        name, spec, retrieval=metrics.retrieval_recall(embedded.image, captions, cfg.recall_ks)
    )
    views = {"roi": embedded.regions, "head": embedded.head_regions}
    for view, per_image in views.items():
        if per_image is None or not len(targets):
            continue
        regions = torch.cat(per_image)
        result.boxes[view] = metrics.topk_accuracy(regions, class_emb, targets)
        if trials:
            result.fgovd[view] = {
                **metrics.trial_accuracy(trials, regions, text),
                "by_attribute": metrics.pair_accuracy(pairs, regions, text),
            }
        if view == "roi":
            result.top_labels = [
                classes[row[0]] for row in metrics.top_labels(regions, class_emb, 1).tolist()
            ]
    return result
