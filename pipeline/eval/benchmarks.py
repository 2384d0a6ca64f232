"""The papers' retrieval benchmarks, read as they are distributed, scored as the papers score them.

``--benchmark NAME=PATH`` (``pipeline eval``); the layouts follow the benchmarks' own loaders:

==============  ===================================================================================
``urban1k``     the folder holding ``image/N.jpg`` and ``caption/N.txt`` (Long-CLIP's Urban1k;
                the caption is the file's first line, as Long-CLIP reads it)
``sharegpt4v``  ShareGPT4V's caption JSON list; its first 1,000 items (``sharegpt4v:10k``: 10,000),
                images at ``item["image"]`` under the file's folder (Long-CLIP's ``share4v_val``)
``docci``       the folder holding ``docci_descriptions.jsonlines`` and ``images/``: the ``test``
                split, ``image_file`` and ``description`` of each row
``flickr30k``   Karpathy's split file (``dataset_flickr30k.json``) or the dataset's folder holding
                it (at its top or one or two folders down): the ``test`` images, all their
                captions (``sentences[].raw``), images in ``images/``, ``flickr30k-images/`` or
                ``Images/`` beside the file or in the folder given
``coco``        the same for ``dataset_coco.json``: images at ``<filepath>/<filename>``
                (``val2014/...``), or in ``images/``
``dci``         the DCI release folder (``densely_captioned_images/``, or the folder holding it):
                every annotation its ``splits.json`` lists, ``photos/<image>`` with
                ``short_caption`` and ``extra_caption`` joined by a newline (the long caption,
                as the Long-CLIP-style DCI evaluations read it: all 7,805 images)
``fgovd``       an FG-OVD benchmark file or the folder of them (``pipeline/eval/fgovd.py``): each
                box against its true caption and negatives, per file, per region path
==============  ===================================================================================

The retrieval benchmarks are each a :class:`RetrievalSet`: images, captions, and which image
each caption describes. Text-to-image ranks the images for every caption; image-to-text is a hit
when any caption of the image is in the top k (``metrics.retrieval_recall``). A file that is not
in its benchmark's layout is a one-line error naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import BadInput, InputNotFound
from pipeline.eval.data import IMAGES_AT_ONCE, EvalImage, image_file
from pipeline.eval.fgovd import FgovdSuite, read_fgovd, score_fgovd
from pipeline.eval.json_fields import field, json_lines, read_json
from pipeline.eval.metrics import retrieval_recall
from pipeline.eval.model import embed_images, embed_texts
from pipeline.models import FineGrainedCLIP
from pipeline.prep.sharegpt4v import first_gpt_turn
from pipeline.text import encoding


@dataclass(frozen=True)
class RetrievalSet:
    images: list[Path]
    captions: list[str]
    image_of_text: list[int]  # per caption: the index of its image


def parse_benchmark(entry: str) -> tuple[str, str]:
    """``NAME=PATH`` → (NAME, PATH), the name one :data:`READERS` knows (with its variant)."""
    name, sep, path = entry.partition("=")
    if not sep or not path:
        raise ValueError(f"benchmarks: {entry!r} is not NAME=PATH")
    if name not in READERS:
        raise ValueError(f"benchmarks: {name!r} is not one of {', '.join(READERS)}")
    return name, path


def read_benchmark(name: str, path: str, fgovd_images: str = "") -> RetrievalSet | FgovdSuite:
    root = Path(path)
    if not root.exists():
        raise InputNotFound(f"benchmarks: {name}={path} does not exist")
    bench = read_fgovd(root, fgovd_images) if name == "fgovd" else READERS[name](root)
    missing = next((p for p in bench.images if not p.is_file()), None)
    if missing is not None:
        raise InputNotFound(f"benchmarks: {name}: image {missing} does not exist")
    if not bench.images:
        raise BadInput(f"benchmarks: {name}={path} holds no image")
    return bench


def score_benchmark(
    model: FineGrainedCLIP,
    name: str,
    bench: RetrievalSet | FgovdSuite,
    batch_size: int,
    recall_ks: tuple[int, ...],
    region_paths: tuple[str, ...],
) -> dict[str, dict]:
    """``{NAME: {metric: value}}``. FG-OVD: the first of ``region_paths`` the model has under
    ``fgovd``, any other as ``fgovd@PATH``, each naming its ``region_path``."""
    if isinstance(bench, RetrievalSet):
        return {name: score_retrieval(model, bench, batch_size, recall_ks)}
    by_path = score_fgovd(model, bench, batch_size, region_paths)
    return {
        name if i == 0 else f"{name}@{path}": {**scores, "region_path": path}
        for i, (path, scores) in enumerate(by_path.items())
    }


@torch.no_grad()
def score_retrieval(
    model: FineGrainedCLIP, bench: RetrievalSet, batch_size: int, ks: tuple[int, ...]
) -> dict[str, float]:
    """R@k both ways, as percentages, with the images and captions counted."""
    chunks = _image_chunks(bench.images)
    images = torch.cat([embed_images(model, chunk, batch_size).image for chunk in chunks])
    texts = torch.cat([embed_texts(model, chunk) for chunk in _chunks(bench.captions)])
    scores = retrieval_recall(images, texts, ks, torch.tensor(bench.image_of_text))
    return {**scores, "images": len(bench.images), "captions": len(bench.captions)}


def _image_chunks(paths: list[Path]) -> Iterator[list[EvalImage]]:
    for chunk in _chunks(paths):
        yield [image_file(p) for p in chunk]


def _chunks(items: list) -> Iterator[list]:
    for start in range(0, len(items), IMAGES_AT_ONCE):
        yield items[start : start + IMAGES_AT_ONCE]


# --- readers ------------------------------------------------------------------------------------


def urban1k(root: Path) -> RetrievalSet:
    captions_dir, images_dir = root / "caption", root / "image"
    if not captions_dir.is_dir() or not images_dir.is_dir():
        raise BadInput(f"benchmarks: urban1k={root} has no caption/ and image/ folders")
    names = sorted((p.stem for p in captions_dir.glob("*.txt")), key=_natural)
    captions = [_first_line(captions_dir / f"{n}.txt") for n in names]
    return RetrievalSet([images_dir / f"{n}.jpg" for n in names], captions, list(range(len(names))))


def sharegpt4v(root: Path, count: int = 1000) -> RetrievalSet:
    items = read_json(root, list)[:count]
    images, captions = [], []
    for i, item in enumerate(items):
        where = f"{root} item {i}"
        image = field(item, "image", str, where)
        turns = field(item, "conversations", list, where)
        caption = first_gpt_turn(turns)
        if not isinstance(caption, str):
            raise BadInput(f"benchmarks: {where}: no gpt turn with a string value in conversations")
        images.append(root.parent / image)
        captions.append(caption)
    return RetrievalSet(images, captions, list(range(len(images))))


def docci(root: Path) -> RetrievalSet:
    file = root / "docci_descriptions.jsonlines"
    if not file.is_file():
        raise BadInput(f"benchmarks: docci={root} has no docci_descriptions.jsonlines")
    images, captions = [], []
    for where, row in json_lines(file):
        if field(row, "split", str, where) == "test":
            images.append(root / "images" / field(row, "image_file", str, where))
            captions.append(field(row, "description", str, where))
    return RetrievalSet(images, captions, list(range(len(images))))


def dci(root: Path) -> RetrievalSet:
    if (root / "densely_captioned_images").is_dir():
        root = root / "densely_captioned_images"
    splits = read_json(root / "splits.json", dict)
    images, captions = [], []
    for split, names in splits.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadInput(f"benchmarks: {root / 'splits.json'}: {split!r} is not a list of file names")
        for name in names:
            file = root / "annotations" / Path(name).name
            annotation = read_json(file, dict)
            images.append(root / "photos" / Path(field(annotation, "image", str, str(file))).name)
            short, extra = (
                field(annotation, key, str, str(file)) for key in ("short_caption", "extra_caption")
            )
            captions.append(f"{short}\n{extra}")
    return RetrievalSet(images, captions, list(range(len(images))))


KARPATHY_FILES = {"flickr30k": "dataset_flickr30k.json", "coco": "dataset_coco.json"}


def karpathy(root: Path, name: str) -> RetrievalSet:
    """Karpathy's split file, or the dataset's folder holding it (as clip_benchmark's
    ``--dataset_root``): the test images and every one of their captions."""
    if root.is_dir():
        split_file = _split_file(root, name)
        folders = list(dict.fromkeys([split_file.parent, root]))  # images beside it, or at the top
    else:
        split_file, folders = root, [root.parent]
    entries = field(read_json(split_file, dict), "images", list, str(split_file))
    images, captions, image_of_text = [], [], []
    for i, entry in enumerate(entries):
        where = f"{split_file} images[{i}]"
        if field(entry, "split", str, where) != "test":
            continue
        sentences = field(entry, "sentences", list, where)
        for j, sentence in enumerate(sentences):
            captions.append(field(sentence, "raw", str, f"{where}.sentences[{j}]"))
            image_of_text.append(len(images))
        images.append(_karpathy_image(folders, entry, where))
    return RetrievalSet(images, captions, image_of_text)


def _split_file(folder: Path, name: str) -> Path:
    """The split file in ``folder``, or one or two folders down (``annotations/``, ``karpathy/``)."""
    filename = KARPATHY_FILES[name]
    found = [
        folder / filename,
        *sorted(folder.glob(f"*/{filename}")),
        *sorted(folder.glob(f"*/*/{filename}")),
    ]
    split_file = next((p for p in found if p.is_file()), None)
    if split_file is None:
        raise BadInput(
            f"benchmarks: {name}={folder} holds no {filename} (Karpathy's split file), nor do its subfolders"
        )
    return split_file


def _karpathy_image(folders: list[Path], entry: dict, where: str) -> Path:
    name = field(entry, "filename", str, where)
    subfolders = [entry["filepath"]] if isinstance(entry.get("filepath"), str) else []
    subfolders += ["images", "flickr30k-images", "Images"]
    candidates = [folder / sub / name for folder in folders for sub in subfolders]
    return next((p for p in candidates if p.is_file()), candidates[0])


READERS: dict[str, Callable[[Path], RetrievalSet]] = {
    "urban1k": urban1k,
    "sharegpt4v": sharegpt4v,
    "sharegpt4v:10k": lambda root: sharegpt4v(root, 10_000),
    "docci": docci,
    "flickr30k": lambda root: karpathy(root, "flickr30k"),
    "coco": lambda root: karpathy(root, "coco"),
    "dci": dci,
    "fgovd": read_fgovd,
}


def _first_line(file: Path) -> str:
    lines = encoding.decode(file.read_bytes(), "replace").splitlines()
    return lines[0] if lines else ""


def _natural(stem: str) -> tuple:
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)
