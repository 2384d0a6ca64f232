"""Typed configuration of the data-prep job (``configs/prep/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import at_least, positive
from pipeline.grounding.config import GroundingConfig
from pipeline.text.config import TextConfig

# Per input.format, the input keys it reads: (required, optional); keys of another format are
# refused. Its reader and manifest entry are in pipeline/prep/inputs.py's FORMATS.
FORMAT_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "index": (("index",), ()),
    "webdataset": (("shards",), ()),
    "coco": (("captions", "images"), ("instances",)),
    "sharegpt4v": (("captions", "images"), ()),
    "visual_genome": (("regions", "images"), ()),
}


@dataclass(frozen=True)
class InputConfig:
    """What the input is: one format and its keys (``pipeline/prep/inputs.py``)."""

    format: Literal["index", "webdataset", "coco", "sharegpt4v", "visual_genome"] = "index"
    index: str = ""  # index: JSONL or Parquet; image paths inside are relative to it
    shards: str = (
        ""  # webdataset: tar URLs as webdataset writes them ({00000..00099}, ::), or folders of .tar
    )
    captions: str = ""  # coco: captions_*.json; sharegpt4v: the caption JSON list
    instances: str = ""  # coco, optional: instances_*.json, whose boxes become the annotations
    regions: str = ""  # visual_genome: region_descriptions.json
    images: str = ""  # coco, sharegpt4v, visual_genome: the folder (or S3 prefix) the images are in
    # visual_genome: "said" keeps the regions the caption says (one per distinct phrase, up to
    # text.max_sentences; the rest counted as dropped boxes), "all" every region as a labelled box
    keep_regions: Literal["said", "all"] = "said"
    source: str = ""  # dataset name written into every sample; default: the input's folder name
    # A slice of the input: the inputs whose ordinal is in [skip, skip + limit); limit null: to the end.
    # The same records and drops as in a run on the whole input. A held-out set: limit=1000, then skip=1000.
    skip: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        required, optional = FORMAT_KEYS[self.format]
        for key in required:
            if not getattr(self, key):
                raise ValueError(f"{key}: required for format {self.format}")
        for key in ("index", "shards", "captions", "instances", "regions", "images"):
            if getattr(self, key) and key not in required + optional:
                raise ValueError(f"{key}: not read by format {self.format} (set input.format)")
        if self.keep_regions != "said" and self.format != "visual_genome":
            raise ValueError(f"keep_regions: not read by format {self.format} (visual_genome only)")
        at_least(self, 0, "skip")
        at_least(self, 1, "limit")


@dataclass(frozen=True)
class ImageConfig:
    max_side: int = 512  # longest side of the stored JPEG
    jpeg_quality: int = 90
    max_pixels: int = 40_000_000  # larger images are decompression-bomb suspects and dropped
    max_bytes: int = 50_000_000  # larger image files are dropped unread (image_too_large)
    max_boxes: int = 500  # input boxes read per record, the first ones; the rest are counted, not kept
    max_label_chars: int = 200  # longer box labels drop their box

    def __post_init__(self) -> None:
        at_least(self, 16, "max_side")
        at_least(self, self.max_side, "max_pixels")
        at_least(self, 1, "jpeg_quality", "max_bytes", "max_boxes", "max_label_chars")
        if self.jpeg_quality > 100:
            raise ValueError(f"jpeg_quality: {self.jpeg_quality} is not in 1..100")


@dataclass(frozen=True)
class RayConfig:
    """The worker pool (``worker.py``): each worker runs every stage over whole shards. Logical
    CPUs are what Ray schedules by, so a 2-core laptop and a 100-node cluster run the same code
    with different numbers of workers. None of these keys changes the output."""

    address: str | None = None  # None: RAY_ADDRESS if set (ray job submit), else a local Ray
    workers: int | None = None  # None: as many as the cluster's CPUs (and GPUs, for a GPU grounder) hold
    worker_num_cpus: float = 1.0
    worker_num_gpus: float | None = None  # None: 1 for the detector when the cluster has GPUs, else 0
    io_threads: int = 8  # image reads in flight per worker (hides S3 latency)
    shard_attempts: int = 3  # worker deaths on one shard before its records are probed (pool.py)
    worker_timeout_s: float = 60.0  # a worker that does not answer a heartbeat this long is lost
    no_worker_timeout_s: float = 600.0  # no live worker this long (none can be placed) ends the job
    # A shard running longer than both (factor x the median time of this job's shards so far, and
    # the floor) is a straggler: a copy of it starts on another worker, the first result wins.
    shard_deadline_factor: float = 5.0
    shard_deadline_floor_s: float = 300.0
    # Where the ids seen so far are kept (prep/dedup.py): "driver", 13 bytes an id on the head node
    # (13 GB at 10^9 records); "distributed", hash-partitioned across dedup_parts actors on the nodes.
    dedup: Literal["driver", "distributed"] = "driver"
    dedup_parts: int = 16

    def __post_init__(self) -> None:
        at_least(self, 1, "workers", "io_threads", "shard_attempts", "shard_deadline_factor", "dedup_parts")
        positive(self, "worker_timeout_s", "no_worker_timeout_s", "shard_deadline_floor_s")
        at_least(self, 0, "worker_num_gpus")
        positive(self, "worker_num_cpus")


@dataclass(frozen=True)
class PrepConfig:
    input: InputConfig
    output: str = ""  # folder that receives the shards and the manifest
    name: str = ""  # dataset name in the manifest; default: the output folder's name
    # What to do with a non-empty output folder; never mixes two runs. "resume": keep the shards a
    # killed run of this same job completed (checksums verified), write the rest.
    existing_output: Literal["fail", "overwrite", "resume"] = "fail"
    samples_per_shard: int = 1000  # input records per shard; a shard holds those that survive
    max_caption_chars: int = 20_000
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("output: required (folder for shards and manifest)")
        at_least(self, 1, "samples_per_shard", "max_caption_chars")
