"""``evaluate``: every checkpoint on the same images and texts, then one report comparing them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import to_dict
from pipeline.device import pick_device
from pipeline.eval import metrics
from pipeline.eval.benchmarks import parse_benchmark, read_benchmark, score_benchmark
from pipeline.eval.config import EvalConfig, parse_checkpoint
from pipeline.eval.data import EvalImage, load_eval_set
from pipeline.eval.model import (
    OPENCLIP_PREFIX,
    available_paths,
    box_scores,
    embed_images,
    embed_texts,
    export_folder,
    load_model,
)
from pipeline.eval.pooler import pooler_diagnostic
from pipeline.eval.report import write_report
from pipeline.eval.result import ModelResult
from pipeline.lineage import make_lineage, read_lineage
from pipeline.models import FineGrainedCLIP

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalTask:
    """What every checkpoint is scored on: the images, their box labels as classes, and the
    FG-OVD trials and per-attribute pairs drawn from those labels (none without ``attributes``)."""

    cfg: EvalConfig
    images: list[EvalImage]
    classes: list[str]
    targets: torch.Tensor  # per box: its label's index in ``classes``
    trials: list[metrics.Trial]
    pairs: list[tuple[int, str, str, str]]
    unparsed: int  # boxes whose label names no value of some attribute group

    @property
    def label_texts(self) -> list[str]:
        """Every label text embedded: the classes and every negative."""
        return sorted(
            {*self.classes, *(n for t in self.trials for n in t.negatives), *(p[2] for p in self.pairs)}
        )


def evaluate(cfg: EvalConfig) -> Path:
    """Run every task for every checkpoint; returns the report folder."""
    device = pick_device(cfg.device)
    checkpoints = [parse_checkpoint(entry) for entry in cfg.checkpoints]
    for _, spec in checkpoints:  # before any work: every checkpoint is there
        if not spec.startswith(OPENCLIP_PREFIX):
            export_folder(spec)
    benchmarks = {
        name: read_benchmark(name, path, cfg.fgovd_images)
        for name, path in map(parse_benchmark, cfg.benchmarks)
    }
    task = build_task(cfg) if cfg.data else None
    results = []
    for name, spec in checkpoints:
        started = time.time()
        model = load_model(spec, device)
        result = score(name, spec, model, task) if task else ModelResult(name, spec, retrieval={})
        for bench, data in benchmarks.items():
            scored = score_benchmark(model, bench, data, cfg.batch_size, cfg.recall_ks, cfg.region_paths)
            result.benchmarks.update(scored)
        log.info("%s: %s (%.0f s)", result.name, result.headline(), time.time() - started)
        results.append(result)
        del model
    lineage = {
        **make_lineage([cfg.data] if cfg.data else [], to_dict(cfg)),
        "checkpoints": {r.name: _checkpoint_lineage(r.spec) for r in results},
    }
    images = task.images if task else []
    return write_report(Path(cfg.out), cfg, _data_summary(task), results, images, lineage)


def _data_summary(task: EvalTask | None) -> dict | None:
    if task is None:
        return None
    return {
        "path": task.cfg.data,
        "images": len(task.images),
        "boxes": len(task.targets),
        "classes": len(task.classes),
        "fgovd_trials": len(task.trials),
        "fgovd_unparsed_boxes": task.unparsed,
        "chance": metrics.chance_levels(len(task.images), len(task.classes), task.trials, task.cfg.recall_ks),
    }


def build_task(cfg: EvalConfig) -> EvalTask:
    images = load_eval_set(cfg.data, cfg.shards, cfg.max_images)
    labels = [label.lower() for im in images for label in im.labels]
    classes = sorted(set(labels))
    class_of = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([class_of[label] for label in labels], dtype=torch.long)
    trials, unparsed, pairs = [], 0, []
    if cfg.attributes:
        trials, unparsed = metrics.make_trials(labels, cfg.attributes, cfg.num_negatives, cfg.seed)
        pairs = metrics.attribute_pairs(labels, cfg.attributes)
    log.info(
        "%d images, %d boxes, %d classes, %d FG-OVD trials (%s)",
        len(images),
        len(labels),
        len(classes),
        len(trials),
        f"{unparsed} boxes' labels not parsed into {'/'.join(cfg.attributes)}"
        if cfg.attributes
        else "no attributes given: FG-OVD not scored",
    )
    return EvalTask(cfg, images, classes, targets, trials, pairs, unparsed)


def score(name: str, spec: str, model: FineGrainedCLIP, task: EvalTask) -> ModelResult:
    """One checkpoint on the task: retrieval, then box classification and FG-OVD per region path."""
    cfg = task.cfg
    embedded = embed_images(model, task.images, cfg.batch_size, cfg.region_paths)
    captions = embed_texts(model, [im.caption for im in task.images])
    label_texts = task.label_texts
    texts = embed_texts(model, [cfg.prompt.format(t) for t in label_texts])
    column = {t: i for i, t in enumerate(label_texts)}
    classes = torch.tensor([column[c] for c in task.classes])
    result = ModelResult(
        name, spec, retrieval=metrics.retrieval_recall(embedded.image, captions, cfg.recall_ks)
    )
    if model.pooler is not None:
        result.pooler = pooler_diagnostic(model, task.images, cfg.batch_size)
    if not len(task.targets):
        return result
    for path in available_paths(model, cfg.region_paths):
        scores = torch.stack(box_scores(model, embedded, path, [texts] * len(task.targets)))
        result.boxes[path] = metrics.topk_accuracy(scores[:, classes], task.targets)
        if task.trials:
            result.fgovd[path] = {
                **metrics.trial_accuracy(task.trials, scores, column),
                "by_attribute": metrics.pair_accuracy(task.pairs, scores, column),
            }
        if not result.top_labels:  # the first path's best label per box, for the examples plot
            best = metrics.top_labels(scores[:, classes], 1)[:, 0].tolist()
            result.top_labels = [task.classes[i] for i in best]
    return result


def _checkpoint_lineage(spec: str) -> dict:
    if spec.startswith(OPENCLIP_PREFIX):
        return {"path": spec}
    try:
        return {"path": spec, **read_lineage(spec)}
    except FileNotFoundError:
        log.warning("%s records no lineage", spec)
        return {"path": spec}
