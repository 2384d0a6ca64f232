"""The Ray Data stages of data prep: image → text → grounding → shard writer.

Every stage maps a batch of rows to the same rows with more columns. A row that fails
gets ``error``/``detail`` set and flows on untouched, so the writer sees every input of
its shard and can account for each one: written, or dropped with a reason.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from pipeline.grounding import Annotation, GroundingConfig, GroundingRequest, build_grounder
from pipeline.prep.config import ImageConfig
from pipeline.prep.images import ImageRejected, encode, map_boxes
from pipeline.schema import Phrase, Sample, sample_key
from pipeline.shards import storage
from pipeline.shards.writer import shard_name, write_shard
from pipeline.text import CaptionParser, Lexeme, TextConfig, TextHierarchy

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]

# Fault injection for tests and failure rehearsals: "<shard index>:<marker file>" makes
# the worker writing that shard die halfway through the tar, once (the marker records it).
CHAOS_ENV = "PIPELINE_CHAOS_KILL_WRITER"


def image_stage(batch: Batch, cfg: ImageConfig) -> Batch:
    rows = _rows(batch)
    for row in rows:
        row.update(jpg=b"", width=0, height=0, annotations="[]", box_drops="{}", repaired="")
        if row["error"]:
            continue
        try:
            stored = encode(_image_bytes(row), cfg)
        except FileNotFoundError:
            row.update(error="image_missing", detail=row["image"])
            continue
        except ImageRejected as e:
            row.update(error=e.reason, detail=e.detail)
            continue
        except OSError as e:
            row.update(error="image_unreadable", detail=f"{type(e).__name__}: {e}"[:200])
            continue
        annotations, box_drops = map_boxes(json.loads(row["boxes"]), stored)
        row.update(jpg=stored.jpg, width=stored.width, height=stored.height, repaired=stored.repaired,
                   annotations=json.dumps(annotations), box_drops=json.dumps(box_drops))
    return _columns(rows)


def _image_bytes(row: dict) -> bytes:
    """The bytes an image reference (``records.InputRecord``) points at: a file, or a range of one."""
    if row["image_size"] < 0:
        return storage.read_bytes(row["image"])
    return storage.read_range(row["image"], row["image_offset"], row["image_size"])


class TextStage:
    """Caption → sentences and phrases, plus lexemes of the annotation labels; spaCy loads once."""

    def __init__(self, cfg: TextConfig):
        self.parser = CaptionParser(cfg)

    def __call__(self, batch: Batch) -> Batch:
        rows = _rows(batch)
        ok = [r for r in rows if not r["error"]]
        hierarchies = self.parser.parse([r["caption"] for r in ok])
        for row, hierarchy in zip(ok, hierarchies):
            annotations = json.loads(row["annotations"])
            lexemes = self.parser.lexemes([a["label"] for a in annotations])
            for a, lexeme in zip(annotations, lexemes):
                a["lexeme"] = lexeme.to_json()
            row["annotations"] = json.dumps(annotations)
            row["text"] = json.dumps(hierarchy.to_json())
        for row in rows:
            row.setdefault("text", "")
        return _columns(rows)


class GroundStage:
    """Phrases → regions with the configured grounder, then the final schema-v1 sample."""

    def __init__(self, cfg: GroundingConfig, source: str):
        self.grounder = build_grounder(cfg)
        self.source = source

    def __call__(self, batch: Batch) -> Batch:
        rows = _rows(batch)
        ok = [r for r in rows if not r["error"]]
        hierarchies = [TextHierarchy.from_json(json.loads(r["text"])) for r in ok]
        requests = [self._request(r, h) for r, h in zip(ok, hierarchies)]
        for row, hierarchy, grounding in zip(ok, hierarchies, self.grounder.ground(requests)):
            phrases = [Phrase(p.text, p.sentence, p.start, p.end, p.kind, region)
                       for p, region in zip(hierarchy.phrases, grounding.phrase_regions)]
            sample = Sample(id=row["id"], source=self.source, width=row["width"], height=row["height"],
                            caption=row["caption"], sentences=hierarchy.sentences, phrases=phrases,
                            regions=grounding.regions)
            row["sample"] = json.dumps(sample.to_json(), ensure_ascii=False)
            row["ambiguous"] = grounding.ambiguous
        for row in rows:
            row.setdefault("sample", "")
            row.setdefault("ambiguous", 0)
        return _columns(rows)

    def _request(self, row: dict, hierarchy: TextHierarchy) -> GroundingRequest:
        annotations = [Annotation(tuple(a["box"]), a["label"], Lexeme.from_json(a["lexeme"]))
                       for a in json.loads(row["annotations"])]
        image = Image.open(io.BytesIO(row["jpg"])).convert("RGB") if self.grounder.needs_image else None
        return GroundingRequest(row["width"], row["height"], hierarchy.phrases, hierarchy.lexemes,
                                annotations, image, hierarchy.sentences)


PROGRESS_DIR = "_progress"  # per-shard completion records of a running job; removed when it ends


def progress_url(root: str, shard: str) -> str:
    return f"{root}/{PROGRESS_DIR}/{shard}.json"


def write_shard_group(batch: Batch, root: str, source: str, run_id: str = "") -> Batch:
    """All rows of one shard → the tar (good rows, in input order), its completion record (what
    a resumed run needs to account for the shard without redoing it), and one stats row."""
    rows = sorted(_rows(batch), key=lambda r: r["ordinal"])
    index = int(rows[0]["shard"])
    name = shard_name(index)
    good = [r for r in rows if not r["error"]]
    samples = ((sample_key(source, r["id"]), r["jpg"], json.loads(r["sample"])) for r in good)
    shard = write_shard(f"{root}/{name}", _maybe_die_halfway(samples, index, len(good)))
    drops = [{"ordinal": int(r["ordinal"]), "id": r["id"], "reason": r["error"], "detail": r["detail"],
              "shard": name} for r in rows if r["error"]]
    metas = [json.loads(r["sample"]) for r in good]
    box_drops = Counter()
    for r in good:
        box_drops.update(json.loads(r["box_drops"]))
    stats = {
        "name": name, "samples": shard.samples, "bytes": shard.bytes, "sha256": shard.sha256,
        "inputs": len(rows), "dropped": len(drops),
        "repaired": sum(bool(r["repaired"]) for r in good),
        "boxes_dropped": sum(box_drops.values()),
        "phrases": sum(len(m["phrases"]) for m in metas),
        "regions": sum(len(m["regions"]) for m in metas),
        "linked_phrases": sum(p["region"] is not None for m in metas for p in m["phrases"]),
        "ambiguous_phrases": sum(int(r["ambiguous"]) for r in good),
        "repaired_by_reason": dict(Counter(r["repaired"] for r in good if r["repaired"])),
        "boxes_dropped_by_reason": dict(box_drops),
    }
    storage.write_atomic(progress_url(root, name), json.dumps(
        {"run_id": run_id, "stats": stats, "drops": drops}).encode())
    return {"shard": np.array([index]), "stats": np.array([json.dumps(stats)]),
            "drops": np.array([json.dumps(drops)])}


def _maybe_die_halfway(samples, index: int, count: int):
    spec = os.environ.get(CHAOS_ENV, "")
    target, _, marker = spec.partition(":")
    if not spec or int(target) != index or os.path.exists(marker):
        yield from samples
        return
    for i, sample in enumerate(samples):
        if i == count // 2:
            open(marker, "w").close()
            log.warning("chaos: killing the writer of shard %d halfway", index)
            os._exit(1)
        yield sample


def _rows(batch: Batch) -> list[dict[str, Any]]:
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    return [{c: _plain(batch[c][i]) for c in columns} for i in range(n)]


def _columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {c: [r[c] for r in rows] for c in rows[0]} if rows else {}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
