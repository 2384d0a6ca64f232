"""ShareGPT4V-style caption files as input: a JSON list of ``{"id", "image", "conversations"}``.

``image`` is a path relative to ``input.images`` (``coco/train2017/000000000009.jpg``,
``sam/images/sa_1.jpg``); the long caption is the value of the first ``"from": "gpt"`` turn of
``conversations`` (the human turn is the prompt, ``"<image>\\nWhat is ..."``). One record per
list item, in file order; the file is streamed (``jsonlist.py``).

The record's id is the ``image`` path, not the item's ``id``: ShareGPT4V's ids are each
source's own (COCO image ids, SAM names, LAION/CC/SBU ids), and the mixed files repeat them
across sources, while the path names one picture. Two items with the same path are one
picture captioned twice; the later is dropped as ``duplicate_id``, so that a picture can be in
a held-out slice or in training, never in both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline import storage
from pipeline.prep.jsonlist import read_json_list
from pipeline.prep.records import Drop, InputRecord, SeenIds, caption_problem, is_text, unique_ids


def read_sharegpt4v(
    captions: str, images: str, max_caption_chars: int, seen: SeenIds | None = None
) -> Iterator[InputRecord | Drop]:
    """The records of a ShareGPT4V caption file, streamed; images under ``images``; ``seen``: the
    ids seen so far (``records.unique_ids``)."""
    yield from unique_ids(
        (
            item if isinstance(item, Drop) else sharegpt4v_record(item, ordinal, images, max_caption_chars)
            for ordinal, item in enumerate(read_json_list(captions, "captions"))
        ),
        seen,
    )


def sharegpt4v_record(item: Any, ordinal: int, images: str, max_caption_chars: int) -> InputRecord | Drop:
    """One list item as a record, or a drop naming what is wrong with it."""
    if not isinstance(item, dict):
        return Drop(ordinal, None, "unparseable_record", f"expected an object, got {type(item).__name__}")
    image = item.get("image")
    if image is None:
        return Drop(ordinal, None, "missing_field", "image")
    if not isinstance(image, str) or not image.strip():
        return Drop(ordinal, None, "invalid_image_ref", repr(image))
    if not is_text(image):
        return Drop(ordinal, None, "invalid_utf8", "image")
    caption = first_gpt_turn(item.get("conversations"))
    if caption is None:
        return Drop(ordinal, image, "missing_field", "caption (no gpt turn with a value in conversations)")
    problem = caption_problem(caption, max_caption_chars)
    if problem:
        return Drop(ordinal, image, *problem)
    return InputRecord(ordinal, image, storage.resolve(images, image), caption, None)


def first_gpt_turn(conversations: Any) -> Any:
    """The value of the first model turn, as given; None when there is none."""
    if not isinstance(conversations, list):
        return None
    return next(
        (turn.get("value") for turn in conversations if isinstance(turn, dict) and turn.get("from") == "gpt"),
        None,
    )
