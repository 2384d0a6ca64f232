"""The metrics, as pure functions of L2-normalised embeddings. Percentages, as the papers report.

Ties count in the model's favour (a right answer is ranked above only the strictly better
scores); with continuous embeddings they do not occur in practice.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DIFFICULTIES = {1: "hard", 2: "medium", 3: "easy"}  # FG-OVD: how many attributes a negative changes


def retrieval_recall(
    image: torch.Tensor, text: torch.Tensor, ks: Sequence[int], image_of_text: torch.Tensor | None = None
) -> dict[str, float]:
    """Images [N, D] and texts [M, D]; text ``j`` describes image ``image_of_text[j]`` (default: text
    ``i`` is image ``i``'s one caption). T2I: rank the N images for each text. I2T: rank the M texts
    for each image, a hit when any of its captions is in the top k (the COCO/Flickr30k protocol
    with 5 captions per image). R@k: % of queries with a hit."""
    if image_of_text is None:
        image_of_text = torch.arange(len(text))
    sim = image @ text.T  # [N, M]
    right = sim[image_of_text, torch.arange(len(text))]  # each text's score with its image
    t2i = (sim > right[None, :]).sum(dim=0)  # images scored above the right one, per text
    best = torch.full((len(image),), -torch.inf).scatter_reduce(0, image_of_text, right, "amax")
    i2t = (sim > best[:, None]).sum(dim=1)  # texts scored above the image's best caption
    return {**{f"i2t_R@{k}": _percent(i2t < k) for k in ks}, **{f"t2i_R@{k}": _percent(t2i < k) for k in ks}}


def topk_accuracy(
    scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Box classification: each box's scores [N, C] over the classes; ``targets`` [N] class indices."""
    rank = (scores > scores.gather(1, targets[:, None])).sum(dim=1)
    return {f"top{k}": _percent(rank < k) for k in ks}


def top_labels(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k] indices of the k best classes per box, from its scores [N, C]."""
    return scores.topk(min(k, scores.shape[1]), dim=1).indices


def first_wins(scores: Sequence[torch.Tensor]) -> float:
    """% of boxes whose first candidate (the true text) scores at least as high as every other:
    the FG-OVD benchmark's top-1 accuracy, each box's scores [1 + negatives]."""
    return _percent(torch.tensor([bool(s[0] >= s[1:].max()) if len(s) > 1 else True for s in scores]))


# ---------------------------------------------------------------------------------------------
# FG-OVD-style scoring: the true label of a box against labels with attributes swapped


def parse_attributes(label: str, attributes: dict[str, list[str]]) -> dict[str, str] | None:
    """Which value of each attribute group the label names, e.g. "small red circle" → {size: small,
    colour: red, shape: circle}; None unless it names exactly one value of every group."""
    words = label.lower().split()
    found = {}
    for group, values in attributes.items():
        hits = [w for w in words if w in values]
        if len(hits) != 1:
            return None
        found[group] = hits[0]
    return found


def swap(label: str, changes: dict[str, str], found: dict[str, str]) -> str:
    """The label with the words of the changed groups replaced (word order and the rest kept)."""
    replace = {found[group]: new for group, new in changes.items()}
    return " ".join(replace.get(w, w) for w in label.lower().split())


@dataclass(frozen=True)
class Trial:
    box: int  # index of the box (region embedding)
    true: str
    negatives: tuple[str, ...]
    difficulty: str  # hard | medium | easy


def make_trials(
    labels: Sequence[str], attributes: dict[str, list[str]], num_negatives: int, seed: int
) -> tuple[list[Trial], int]:
    """One trial per box and difficulty, with up to ``num_negatives`` negatives drawn (seeded) from
    every label that changes exactly that many attribute groups. Returns (trials, boxes whose label
    could not be parsed into the groups)."""
    rng = random.Random(seed)
    trials, unparsed = [], 0
    for box, label in enumerate(labels):
        found = parse_attributes(label, attributes)
        if found is None:
            unparsed += 1
            continue
        for differ, difficulty in DIFFICULTIES.items():
            candidates = [swap(label, changes, found) for changes in _changes(found, attributes, differ)]
            if candidates:
                picked = rng.sample(candidates, min(num_negatives, len(candidates)))
                trials.append(Trial(box, label.lower(), tuple(picked), difficulty))
    return trials, unparsed


def attribute_pairs(
    labels: Sequence[str], attributes: dict[str, list[str]]
) -> list[tuple[int, str, str, str]]:
    """Every (box, true label, label with one group swapped, group): the per-attribute breakdown."""
    pairs = []
    for box, label in enumerate(labels):
        found = parse_attributes(label, attributes)
        if found is not None:
            for changes in _changes(found, attributes, 1):
                (group,) = changes
                pairs.append((box, label.lower(), swap(label, changes, found), group))
    return pairs


def trial_accuracy(trials: Sequence[Trial], scores: torch.Tensor, column: dict[str, int]) -> dict[str, float]:
    """% of trials, per difficulty, where the true label scores above every negative; ``scores``
    [N, V]: each box against every text, ``column``: a text's column."""
    wins: dict[str, list[bool]] = {d: [] for d in DIFFICULTIES.values()}
    for t in trials:
        row = scores[t.box, [column[s] for s in (t.true, *t.negatives)]]
        wins[t.difficulty].append(bool(row[0] > row[1:].max()))
    return {d: _percent(torch.tensor(w)) for d, w in wins.items() if w}


def pair_accuracy(
    pairs: Sequence[tuple[int, str, str, str]], scores: torch.Tensor, column: dict[str, int]
) -> dict[str, float]:
    """% of (true, one-attribute-swapped) pairs the box prefers the true label in, per group."""
    wins: dict[str, list[bool]] = {}
    for box, true, negative, group in pairs:
        wins.setdefault(group, []).append(bool(scores[box, column[true]] > scores[box, column[negative]]))
    return {g: _percent(torch.tensor(w)) for g, w in wins.items()}


def chance_levels(num_images: int, num_classes: int, trials: Sequence[Trial], ks: Sequence[int]) -> dict:
    """What a model that guesses scores on each metric, for the report's reference row."""
    per_difficulty: dict[str, list[float]] = {}
    for t in trials:
        per_difficulty.setdefault(t.difficulty, []).append(1 / (1 + len(t.negatives)))
    return {
        "retrieval": {
            f"{d}_R@{k}": round(100 * min(k, num_images) / num_images, 2) for d in ("i2t", "t2i") for k in ks
        },
        "boxes": {f"top{k}": round(100 * min(k, num_classes) / max(num_classes, 1), 2) for k in (1, 5)},
        "fgovd": {d: round(100 * sum(v) / len(v), 2) for d, v in per_difficulty.items()},
    }


def _changes(found: dict[str, str], attributes: dict[str, list[str]], differ: int):
    """Every assignment of new values to exactly ``differ`` groups."""
    for groups in itertools.combinations(found, differ):
        for values in itertools.product(*([v for v in attributes[g] if v != found[g]] for g in groups)):
            yield dict(zip(groups, values))


def _percent(hits: torch.Tensor) -> float:
    return round(100.0 * hits.float().mean().item(), 2) if hits.numel() else float("nan")
