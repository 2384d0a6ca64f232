"""The FG-OVD benchmark (Bianchi et al.) as β-CLIP scores it: each box against its own true
caption and the benchmark's negatives, top-1 accuracy per file.

``--benchmark fgovd=PATH``: one benchmark file, or the folder holding them. Two layouts are read:

* FG-OVD's own COCO-style JSON (``1_attributes.json`` ... ``transparency.json``): ``images``
  (``id``, ``file_name``), ``categories`` (``id``, ``name``: the caption) and ``annotations``
  (``image_id``, ``bbox`` x/y/w/h, ``category_id`` the true caption, ``neg_category_ids`` the
  negatives); ``pos_expression``/``neg_expression`` strings instead of ids are read too.
* FG-CLIP's conversion, which β-CLIP's ``validate_fgovd_distributed.py`` reads
  (``h_attributes_llava.jsonl`` ...): one box per line, ``img_path``, ``bbox``,
  ``pos_expression``, ``neg_expression``.

Images (``file_name`` is COCO's ``train2017/...``) are looked up under ``fgovd_images`` if given,
else beside the file or in ``images/`` there; a plain file name of the same is accepted too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from pipeline.config import BadInput
from pipeline.eval.data import IMAGES_AT_ONCE, Box, EvalImage, image_file
from pipeline.eval.json_fields import field, json_lines, read_json
from pipeline.eval.metrics import first_wins
from pipeline.eval.model import available_paths, box_scores, embed_images, embed_texts
from pipeline.models import FineGrainedCLIP
from pipeline.schema import box_numbers

# file stem → the benchmark's name for it: FG-OVD's own files, then FG-CLIP's conversion
FILES = {
    "1_attributes": "hard",
    "2_attributes": "medium",
    "3_attributes": "easy",
    "shuffle_negatives": "trivial",
    "color": "color",
    "material": "material",
    "pattern": "pattern",
    "transparency": "transparency",
    "h_attributes_llava": "hard",
    "m_attributes_llava": "medium",
    "e_attributes_llava": "easy",
    "shuffle_negatives_llava": "trivial",
}


@dataclass(frozen=True)
class BoxTrial:
    image: Path
    box: Box  # x0, y0, x1, y1 in the image's pixels
    texts: tuple[str, ...]  # the true caption first, then the negatives


@dataclass(frozen=True)
class FgovdSuite:
    files: dict[str, list[BoxTrial]]  # the benchmark's name for the file → its boxes

    @property
    def images(self) -> list[Path]:
        return sorted({t.image for trials in self.files.values() for t in trials})


def read_fgovd(root: Path, images: str = "") -> FgovdSuite:
    named = (root / f"{stem}{suffix}" for stem in FILES for suffix in (".json", ".jsonl"))
    files = [root] if root.is_file() else [p for p in named if p.is_file()]
    if not files:
        raise BadInput(f"benchmarks: fgovd={root} holds none of FG-OVD's files ({', '.join(FILES)})")
    folders = [Path(images)] if images else [files[0].parent, files[0].parent / "images"]
    suite: dict[str, list[BoxTrial]] = {}
    for file in files:
        name = FILES.get(file.stem, file.stem)
        if name in suite:
            raise BadInput(f"benchmarks: fgovd={root} holds two files for {name!r}: name the one to score")
        rows = _llava_rows(file) if file.suffix == ".jsonl" else _coco_rows(file)
        suite[name] = [BoxTrial(_find(path, folders, where), box, texts) for where, path, box, texts in rows]
    return FgovdSuite(suite)


@torch.no_grad()
def score_fgovd(
    model: FineGrainedCLIP, suite: FgovdSuite, batch_size: int, paths: tuple[str, ...]
) -> dict[str, dict]:
    """Top-1 accuracy (%) per file, for each region path the model has: ``{path: {file: %}}``."""
    paths = tuple(available_paths(model, paths))
    scores: dict[str, dict[str, list[torch.Tensor]]] = {p: {} for p in paths}
    for name, trials in suite.files.items():
        for images, chunk in _by_image(trials):
            embedded = embed_images(model, images, batch_size, paths)
            distinct = sorted({text for t in chunk for text in t.texts})
            text = dict(zip(distinct, embed_texts(model, distinct)))
            candidates = [torch.stack([text[s] for s in t.texts]) for t in chunk]
            for path in paths:
                scores[path].setdefault(name, []).extend(box_scores(model, embedded, path, candidates))
    return {
        path: {
            **{name: first_wins(s) for name, s in per_file.items()},
            "boxes": sum(map(len, per_file.values())),
        }
        for path, per_file in scores.items()
    }


def _by_image(trials: list[BoxTrial]) -> Iterator[tuple[list[EvalImage], list[BoxTrial]]]:
    """The trials grouped by image, ``IMAGES_AT_ONCE`` images at a time: (images with their boxes,
    the trials in the same box order)."""
    grouped: dict[Path, list[BoxTrial]] = {}
    for t in trials:
        grouped.setdefault(t.image, []).append(t)
    paths = list(grouped)
    for start in range(0, len(paths), IMAGES_AT_ONCE):
        images, chunk = [], []
        for path in paths[start : start + IMAGES_AT_ONCE]:
            images.append(image_file(path, [t.box for t in grouped[path]]))
            chunk += grouped[path]
        yield images, chunk


def _coco_rows(file: Path) -> Iterator[tuple[str, str, Box, tuple[str, ...]]]:
    data = read_json(file, dict)
    image_file = {
        field(im, "id", int, f"{file} images[{i}]"): field(im, "file_name", str, f"{file} images[{i}]")
        for i, im in enumerate(field(data, "images", list, str(file)))
    }
    caption = {
        field(c, "id", int, f"{file} categories[{i}]"): field(c, "name", str, f"{file} categories[{i}]")
        for i, c in enumerate(field(data, "categories", list, str(file)))
    }
    for i, ann in enumerate(field(data, "annotations", list, str(file))):
        where = f"{file} annotations[{i}]"
        image = _known(image_file, field(ann, "image_id", int, where), where, "image_id")
        if isinstance(ann, dict) and "pos_expression" in ann:
            texts = _expressions(ann, where)
        else:
            ids = [field(ann, "category_id", int, where), *field(ann, "neg_category_ids", list, where)]
            texts = tuple(_known(caption, c, where, "neg_category_ids") for c in ids)
        yield where, image, _box(ann, where), texts


def _llava_rows(file: Path) -> Iterator[tuple[str, str, Box, tuple[str, ...]]]:
    for where, row in json_lines(file):
        yield where, field(row, "img_path", str, where), _box(row, where), _expressions(row, where)


def _expressions(row: Any, where: str) -> tuple[str, ...]:
    """``pos_expression`` and ``neg_expression``, each text a string or a list of tokens."""
    texts = [field(row, "pos_expression", (str, list), where), *field(row, "neg_expression", list, where)]
    if not all(
        isinstance(t, str) or (isinstance(t, list) and all(isinstance(w, str) for w in t)) for t in texts
    ):
        raise BadInput(f"benchmarks: {where}: an expression is neither a string nor a list of words")
    return tuple(t if isinstance(t, str) else " ".join(t) for t in texts)


def _box(row: Any, where: str) -> Box:
    numbers = box_numbers(field(row, "bbox", list, where))
    if isinstance(numbers, str) or numbers[2] < 0 or numbers[3] < 0:
        raise BadInput(f"benchmarks: {where}: bbox is not four finite numbers x, y, w, h >= 0")
    x, y, w, h = numbers
    return x, y, x + w, y + h


def _known(table: dict[int, str], key: Any, where: str, name: str) -> str:
    if not isinstance(key, int) or key not in table:
        raise BadInput(f"benchmarks: {where}: {name} {key!r} names nothing in the file")
    return table[key]


def _find(name: str, folders: list[Path], where: str) -> Path:
    """The image ``name`` (a relative path such as ``train2017/x.jpg``) under the first folder that
    has it, or has its plain file name; the first candidate when none has (reported missing)."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise BadInput(f"benchmarks: {where}: image {name!r} is not a relative path inside the image folder")
    candidates = [folder / sub for folder in folders for sub in (relative, relative.name)]
    return next((p for p in candidates if p.is_file()), candidates[0])
