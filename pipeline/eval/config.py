"""Typed configuration of an evaluation (a YAML file and/or the command line)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import DeviceChoice, at_least, check_choices
from pipeline.eval.benchmarks import parse_benchmark
from pipeline.eval.model import REGION_PATHS


@dataclass(frozen=True)
class EvalConfig:
    out: str  # report folder: metrics.json, report.md, report.html, *.png
    checkpoints: tuple[str, ...]  # "[name=]spec": a run folder, an export folder, or openclip:NAME[:TAG]
    data: str = ""  # a dataset (folder or dataset.json, local or s3://) from data prep: docs/evaluation.md
    # The papers' benchmarks as distributed, "NAME=PATH" (pipeline/eval/benchmarks.py): urban1k,
    # sharegpt4v (or sharegpt4v:10k), docci, flickr30k, coco. Data, benchmarks, or both.
    benchmarks: tuple[str, ...] = ()
    shards: tuple[str, ...] = ()  # evaluate only these shards of the dataset (held-out ones); default all
    max_images: int = 1000  # the first N images (0: all)
    batch_size: int = 32
    device: DeviceChoice = "auto"
    prompt: str = "a photo of a {}."  # label → text, for box classification and FG-OVD
    # How boxes are scored (pipeline/eval/model.py REGION_PATHS; which paper uses which:
    # docs/evaluation.md): roi, head, crop, pooler. A path the model lacks (head, pooler) is skipped.
    region_paths: tuple[str, ...] = ("roi", "head")
    fgovd_images: str = (
        ""  # the folder FG-OVD's file_name values are under (COCO's); default: beside the file
    )
    recall_ks: tuple[int, ...] = (1, 5, 10)
    # FG-OVD: attribute groups and their values; a box label is parsed into one value per group, and
    # negatives swap 1 (hard), 2 (medium) or 3 (easy) of them. None given: FG-OVD is not scored.
    # The generated corpus's: configs/eval/synthetic.yaml.
    attributes: dict[str, list[str]] = field(default_factory=dict)
    num_negatives: int = 5  # per box and difficulty (fewer where fewer exist)
    examples: int = 4  # images drawn in the report, with their boxes and top labels
    seed: int = 0  # which negatives are drawn
    # the checkpoint every other one is held against (eval/verdict.py): kept retrieval, better regions
    baseline: str = "clip"
    note: str = ""  # a paragraph at the top of the report: what the run can and cannot show

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ValueError("checkpoints: at least one (a run folder, an export, or openclip:NAME[:TAG])")
        if not self.data and not self.benchmarks:
            raise ValueError("data: required unless benchmarks are given (NAME=PATH)")
        benchmark_names = [parse_benchmark(b)[0] for b in self.benchmarks]
        if len(set(benchmark_names)) != len(benchmark_names):
            raise ValueError(f"benchmarks: each at most once, got {benchmark_names}")
        names = [parse_checkpoint(c)[0] for c in self.checkpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"checkpoints: names must differ, got {names}; write them as name=spec")
        check_choices(self)
        at_least(self, 0, "max_images", "examples", "seed")
        at_least(self, 1, "batch_size", "num_negatives")
        unknown = sorted(set(self.region_paths) - set(REGION_PATHS))
        if unknown or not self.region_paths:
            raise ValueError(f"region_paths: {unknown or '[]'} not among {', '.join(REGION_PATHS)}")
        if "{}" not in self.prompt:
            raise ValueError(f"prompt: {self.prompt!r} has no {{}} for the label")
        if not self.recall_ks or any(k < 1 for k in self.recall_ks):
            raise ValueError(f"recall_ks: need values >= 1, got {list(self.recall_ks)}")
        if not isinstance(self.attributes, dict) or not all(
            isinstance(v, list) and len(v) >= 2 and all(isinstance(w, str) and w for w in v)
            for v in self.attributes.values()
        ):
            raise ValueError("attributes: expected a mapping of group → list of at least two words")
        words = [w for values in self.attributes.values() for w in values]
        if len(set(words)) != len(words):
            raise ValueError("attributes: a word belongs to more than one group")


def parse_checkpoint(entry: str) -> tuple[str, str]:
    """``[name=]spec`` → (the report's name for it, the spec). Without a name: the spec's last part."""
    name, sep, spec = entry.partition("=")
    if sep and "/" not in name and ":" not in name:
        return name, spec
    return entry.rstrip("/").rsplit("/", 1)[-1].removeprefix("openclip:"), entry
