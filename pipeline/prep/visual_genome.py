"""Visual Genome region descriptions as input: ``region_descriptions.json``, a JSON list of
``{"id": image_id, "regions": [{"region_id", "x", "y", "width", "height", "phrase"}, ...]}``.

One record per list item, in file order; the file is streamed (``jsonlist.py``). The image is
``<id>.jpg``, found by listing ``input.images`` and its ``VG_100K/`` and ``VG_100K_2/`` once:
the two zips unpack into those folders, and some copies merge them into one. An image in none
of them points at ``input.images/<id>.jpg``, and the image stage drops it as ``image_missing``.
``image_data.json`` is not read: the listing finds every image, and the boxes are checked
against the decoded image like any box.

VG has no long caption, so one is built from the regions: each distinct phrase, in region
order, becomes a sentence of its own (as a COCO caption does), up to ``text.max_sentences``
of them, because the hierarchy keeps no more sentences than that, and a box whose sentence is
cut would be a region no phrase can reach. Each sentence's region is its box, ``[x, y, x + w,
y + h]`` labelled with the phrase, so the ``annotations`` grounder links the sentence's first
noun chunk to it (the label is the sentence; docs/text_and_grounding.md). A phrase repeated in
an image (VG has many: several annotators, several windows) is said once and keeps its first
region. The regions left out are counted in the shard's ``boxes_dropped_by_reason``:
``box_repeated_phrase`` and ``box_sentence_cut`` (after ``text.max_sentences``), unless
``input.keep_regions: all`` keeps every region as a box labelled with its phrase: those no
sentence says are regions no phrase links to (box classification and every reader of
``regions`` see them). A region
whose phrase is not a non-empty string becomes a box without a label, which the image stage
counts as ``box_label_invalid``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline import storage
from pipeline.prep.jsonlist import read_json_list
from pipeline.prep.records import (
    Drop,
    InputRecord,
    SeenIds,
    as_sentence,
    caption_problem,
    is_text,
    record_id,
    unique_ids,
    xywh_to_xyxy,
)

IMAGE_FOLDERS = ("", "VG_100K", "VG_100K_2")  # under input.images; the first holding <id>.jpg wins


def read_visual_genome(
    regions: str,
    images: str,
    max_caption_chars: int,
    max_sentences: int,
    keep_all: bool = False,
    seen: SeenIds | None = None,
) -> Iterator[InputRecord | Drop]:
    """The records of a region descriptions file, streamed; images found under ``images``;
    ``keep_all``: every region a box (``input.keep_regions``); ``seen``: the ids seen so far
    (``records.unique_ids``)."""
    found = image_files(images)
    items = enumerate(read_json_list(regions, "regions"))
    yield from unique_ids(
        (
            item
            if isinstance(item, Drop)
            else vg_record(item, ordinal, found, images, max_caption_chars, max_sentences, keep_all)
            for ordinal, item in items
        ),
        seen,
    )


def image_files(images: str) -> dict[str, str]:
    """File name → URL of every file in the image folders (one listing per folder)."""
    found: dict[str, str] = {}
    for sub in IMAGE_FOLDERS:
        folder = storage.resolve(images, sub) if sub else images
        for name in storage.list_names(folder):
            found.setdefault(name, storage.resolve(folder, name))
    return found


def vg_record(
    item: Any,
    ordinal: int,
    found: dict[str, str],
    images: str,
    max_caption_chars: int,
    max_sentences: int,
    keep_all: bool = False,
) -> InputRecord | Drop:
    """One image's entry as a record (caption and boxes from its regions), or a drop."""
    if not isinstance(item, dict):
        return Drop(ordinal, None, "unparseable_record", f"expected an object, got {type(item).__name__}")
    if item.get("id") is None:
        return Drop(ordinal, None, "missing_field", "id")
    rid = record_id(item["id"])
    if rid is None or not rid.strip() or not is_text(rid):
        return Drop(ordinal, None, "invalid_id", repr(item["id"]))
    if not isinstance(item.get("regions"), list):
        return Drop(ordinal, rid, "missing_field", "regions")
    caption, boxes, left_out = regions_caption(item["regions"], max_sentences, keep_all)
    if not caption:
        return Drop(ordinal, rid, "missing_field", "caption (no region has a phrase)")
    problem = caption_problem(caption, max_caption_chars)
    if problem:
        return Drop(ordinal, rid, *problem)
    name = f"{rid}.jpg"
    image = found.get(name) or storage.resolve(images, name)
    return InputRecord(ordinal, rid, image, caption, boxes, boxes_left_out=left_out or None)


def regions_caption(
    regions: list, max_sentences: int, keep_all: bool = False
) -> tuple[str, list[dict], dict[str, int]]:
    """The caption (a sentence per distinct phrase, at most ``max_sentences``), the boxes of the
    regions it says (``keep_all``: of every region), each labelled with its phrase, and the
    regions left out, by reason: ``box_repeated_phrase`` (a phrase said already keeps its first
    region), ``box_sentence_cut`` (after the last sentence kept)."""
    sentences: list[str] = []
    boxes: list[dict] = []
    left_out = {"box_repeated_phrase": 0, "box_sentence_cut": 0}
    for region in regions:
        phrase = region.get("phrase") if isinstance(region, dict) else None
        sentence = as_sentence(phrase) if isinstance(phrase, str) and is_text(phrase) else ""
        said = sentence in sentences
        cut = not said and len(sentences) == max_sentences
        if (said or cut) and not keep_all:
            left_out["box_repeated_phrase" if said else "box_sentence_cut"] += 1
            continue
        if sentence and not (said or cut):
            sentences.append(sentence)
        xywh = [region.get(k) for k in ("x", "y", "width", "height")] if isinstance(region, dict) else None
        boxes.append({"box": xywh_to_xyxy(xywh), "label": " ".join(phrase.split()) if sentence else None})
    return " ".join(sentences), boxes, {reason: n for reason, n in left_out.items() if n}
