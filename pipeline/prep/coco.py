"""COCO-style annotations as input: captions, and optionally instance boxes, → one record per image.

``captions_*.json`` has ``images`` (``id``, ``file_name``) and ``annotations`` (``image_id``,
``caption``); ``instances_*.json`` has ``annotations`` (``image_id``, ``bbox`` ``[x, y, w, h]``,
``category_id``, ``iscrowd``) and ``categories`` (``id``, ``name``). An image is
``input.images/<file_name>``.

One record per entry of the captions file's ``images``, in file order. COCO gives about five
short, independent captions per image; joined, they make the long caption the sentence →
phrase hierarchy needs. Each is whitespace-collapsed, capitalised and closed with a full stop
when it has no final punctuation, so that each becomes a sentence of its own; they are joined
with spaces in annotation order, an exact repeat only once. Boxes become ``[x, y, x + w, y + h]``
labelled with the category name; their geometry is checked against the decoded image like any
box (a zero-width box is counted in ``boxes_dropped_by_reason``, its record kept).

Crowd annotations (``iscrowd: 1``) are left out: their box covers a group of objects, and linking
it to a phrase about one ("a person") would teach the phrase-region loss the wrong region.

An annotation that cannot be attached to an image's record is an input of its own: a row of
``dropped.parquet`` whose ordinal comes after the images' (caption annotations first, then
instance annotations, in file order) and whose id is the image id it names. Reasons:
``unknown_image`` (image_id not in ``images``), ``unknown_category``, ``crowd_annotation``,
``caption_not_string``. So for COCO, inputs = images + annotations not attached. An image entry
without ``id`` or ``file_name`` is dropped as ``missing_field``, an image without captions as
``missing_field`` (``caption``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pipeline import storage
from pipeline.config import BadInput
from pipeline.prep.records import (
    Drop,
    InputRecord,
    SeenIds,
    as_sentence,
    caption_problem,
    declared_size,
    parse_json,
    record_id,
    unique_ids,
    xywh_to_xyxy,
)
from pipeline.text import encoding


def read_coco(
    captions: str, instances: str, images: str, max_caption_chars: int, seen: SeenIds | None = None
) -> Iterator[InputRecord | Drop]:
    """The records of a COCO captions file (+ instances file, when given); images under ``images``;
    ``seen``: the ids seen so far (``records.unique_ids``)."""
    yield from coco_items(
        _load(captions, "captions"),
        _load(instances, "instances") if instances else None,
        images,
        max_caption_chars,
        seen,
    )


def coco_items(
    captions: dict,
    instances: dict | None,
    images_dir: str,
    max_caption_chars: int,
    seen: SeenIds | None = None,
) -> Iterator[InputRecord | Drop]:
    """Parsed COCO files → every image as a record or a drop, then every annotation not attached."""
    images = _section(captions, "images", "captions")
    texts: dict[str, list[str]] = {}
    boxes: dict[str, list[dict]] = {}
    for image in images:
        rid = record_id(image.get("id")) if isinstance(image, dict) else None
        if rid is not None and rid not in texts:
            texts[rid], boxes[rid] = [], []
    loose: list[tuple[str | None, str, str]] = []  # (image id, reason, detail) of annotations not attached
    for ann in _section(captions, "annotations", "captions"):
        rid, what = _target(ann, "captions")
        if rid not in texts:
            loose.append((rid, "unknown_image", f"{what}: image_id is not in images"))
        elif not isinstance(ann.get("caption"), str):
            loose.append((rid, "caption_not_string", f"{what}: {type(ann.get('caption')).__name__}"))
        else:
            texts[rid].append(ann["caption"])
    if instances is not None:
        loose += _attach_instances(instances, boxes)

    def records() -> Iterator[InputRecord | Drop]:
        for ordinal, image in enumerate(images):
            rid = record_id(image.get("id")) if isinstance(image, dict) else None
            if rid is None:
                yield Drop(ordinal, None, "missing_field", "id")
            elif not isinstance(image.get("file_name"), str) or not image["file_name"].strip():
                yield Drop(ordinal, rid, "missing_field", "file_name")
            elif not texts[rid]:
                yield Drop(ordinal, rid, "missing_field", "caption (the image has no caption annotation)")
            else:
                caption = join_captions(texts[rid])
                problem = caption_problem(caption, max_caption_chars)
                yield (
                    Drop(ordinal, rid, *problem)
                    if problem
                    else InputRecord(
                        ordinal,
                        rid,
                        storage.resolve(images_dir, image["file_name"]),
                        caption,
                        boxes[rid] if instances is not None else None,
                        declared_size=declared_size(image),
                    )
                )

    yield from unique_ids(records(), seen)
    for ordinal, (rid, reason, detail) in enumerate(loose, start=len(images)):
        yield Drop(ordinal, rid, reason, detail)


def _attach_instances(instances: dict, boxes: dict[str, list[dict]]) -> list[tuple[str | None, str, str]]:
    """Each instance annotation's box onto its image's list in ``boxes``; returns the ones that
    attach to no image or name no known category, as (image id, reason, detail)."""
    categories = {
        record_id(c.get("id")): c.get("name")
        for c in _section(instances, "categories", "instances")
        if isinstance(c, dict) and isinstance(c.get("name"), str)
    }
    loose = []
    for ann in _section(instances, "annotations", "instances"):
        rid, what = _target(ann, "instances")
        category = record_id(ann.get("category_id")) if isinstance(ann, dict) else None
        if rid not in boxes:
            loose.append((rid, "unknown_image", f"{what}: image_id is not in images"))
        elif ann.get("iscrowd"):
            loose.append((rid, "crowd_annotation", f"{what}: a box around a group, not one object"))
        elif category not in categories:
            loose.append((rid, "unknown_category", f"{what}: category_id {ann.get('category_id')!r}"))
        else:
            boxes[rid].append({"box": xywh_to_xyxy(ann.get("bbox")), "label": categories[category]})
    return loose


def join_captions(captions: list[str]) -> str:
    """Short captions → one long caption, each a sentence of its own."""
    return " ".join(dict.fromkeys(s for s in map(as_sentence, captions) if s))


def _target(ann: Any, file: str) -> tuple[str | None, str]:
    """The image id an annotation names, and how to point at the annotation in a drop's detail."""
    if not isinstance(ann, dict):
        return None, f"{file} annotation {json.dumps(ann)[:100]}"
    image_id = ann.get("image_id")
    return record_id(image_id), f"{file} annotation {ann.get('id')!r} (image_id {image_id!r})"


def _section(data: Any, name: str, file: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(name), list):
        raise BadInput(f"input.{file}: no '{name}' list; is this a COCO {file} file?")
    return data[name]


def _load(url: str, key: str) -> Any:
    """The file's JSON; bytes that are not UTF-8 become lone surrogates (``surrogateescape``),
    so that one bad byte drops the record holding it (``invalid_utf8``), not the file. A
    byte-order mark (Windows tools write one) says the encoding: UTF-8, or UTF-16 or UTF-32."""
    try:
        return parse_json(encoding.decode(storage.read_bytes(url), "surrogateescape"))
    except ValueError as e:
        raise BadInput(f"input.{key}: {url} is not JSON: {e}") from e
