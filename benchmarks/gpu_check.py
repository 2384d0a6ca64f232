"""The GPU check: the training side's speed on one GPU, every figure measured in one run.

    bash benchmarks/gpu_check.sh [--out runs/gpu_check.json]   # one GPU, a few minutes
    bash benchmarks/gpu_check.sh --cpu-smoke                   # the same code paths on CPU (CI)
    bash benchmarks/gpu_check.sh --offline [--out ...]         # what gpu_bundle.sh made, no PyPI/Ray

Random-init weights, no network. The parts, each measured even when another fails:

1. ``loader``: the demo's generated corpus through the real data prep (a local Ray), then the
   training loader alone with one worker per core: samples/s. Its batches feed the parts below.
   ``--data``: a dataset made beforehand by ``--prepare`` (where Ray is), so that the GPU
   machine needs neither Ray nor spaCy.
2. ``objectives``: ``clip``, ``beta``, ``harmo``, ``beta+harmo`` as ``train.py`` trains them
   (``configs/train/beta_vitb16.yaml``: ViT-B/16 at 224 px, 248-token text, DeepSpeed ZeRO-2,
   bf16, batch 64 per GPU, halved with a note only when memory runs out; ``grad_accum=1``, so
   every step includes the optimizer's). All train on the same batches (K = 36 text slots,
   R = 16 regions), as in the demo. Warm-up steps, then timed ones: samples/s, text tokens/s
   (real tokens the objective encodes), padding (real tokens / text positions encoded), MFU,
   peak memory, and how often one micro-step's forward and loss make the host wait for the GPU
   (CUDA's sync debug mode; target 0).
3. ``open_clip``: a plain open_clip step on the same backbone, batches and device: its
   ``ClipLoss``, ``torch.optim.AdamW``, ``torch.autocast`` bf16, full-context captions;
   ``clip_vs_open_clip`` is our ``clip`` step's samples/s over its.
4. ``detector``: the ``detector`` grounder of ``configs/prep/detector.yaml`` (OWLv2 base
   architecture, random init) on 512×384 images with ``max_queries`` noun-chunk queries each,
   at its configured batch: images/s through processor, model and post-processing.

MFU = samples/s × FLOPs per sample / peak. FLOPs per sample: one training micro-step's forward
and backward as torch's FlopCounterMode counts them on the real step (matmuls, convolutions,
attention; not the optimizer or elementwise work), over the batch size. Peak: the device's dense
bf16 tensor-core peak, from ``pipeline.device.BF16_PEAK_TFLOPS`` by device name (or ``--peak-tflops``).

``--cpu-smoke`` runs every part on the CPU at the tiny config (FG-Tiny-16, fp32, gloo, a tiny
OWLv2), with few steps: it checks that the script runs, its figures mean little. Writes one JSON
file, prints a table, and exits 1 if any part failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import os
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import open_clip
import torch
import yaml
from demo_batches import loader_rate, prepare
from PIL import Image

from pipeline.batch import Batch
from pipeline.config import build, load_config
from pipeline.device import bf16_peak_tflops
from pipeline.grounding import build_grounder
from pipeline.grounding.base import GroundingRequest
from pipeline.grounding.config import GroundingConfig
from pipeline.grounding.random_owlv2 import save_random_owlv2
from pipeline.lineage import environment
from pipeline.models import FineGrainedCLIP, create_backbone
from pipeline.objectives import compute_loss
from pipeline.objectives.config import NAMES
from pipeline.schema import Phrase
from pipeline.synthetic import COLOURS, SHAPES
from pipeline.text.lexeme import Lexeme
from pipeline.training.config import TrainConfig
from pipeline.training.distributed import World, init_distributed
from pipeline.training.engine import build_engine, precision_of
from pipeline.training.metrics import FlopCount, mfu
from pipeline.training.step import forward_backward, to_device

REPO = Path(__file__).resolve().parents[1]
MFU_FORMULA = (
    "MFU = samples/s × FLOPs per sample / peak; FLOPs per sample = FlopCounterMode's count of one "
    "micro-step's forward + backward (matmuls, convolutions, attention) / batch size; peak = the "
    "device's dense bf16 tensor-core FLOP/s"
)


# Dense bf16 tensor-core peaks per GPU, TFLOP/s without sparsity (NVIDIA datasheets). Matched in
# order, as whole words, against the device name: variants come before their family ("H100 PCIe"
# before "H100"); "A10" is neither "A100" nor "A10G".
@dataclasses.dataclass(frozen=True)
class Profile:
    config: str  # the training recipe every objective runs with
    device: str
    batch_size: int  # per GPU, before any lowering for memory
    records: int  # generated samples prepped for the loader
    loader_rounds: int  # timed rounds of one batch per loader worker
    warmup: int  # steps before the timed ones (the first also counts FLOPs)
    steps: int
    detector: str  # OWLv2 size (pipeline.grounding.random_owlv2.SIZES)
    detector_batches: int  # timed, after one warm-up batch
    threads: int | None  # torch's intra-op threads; None: its default (one per core)


PROFILES = {
    "gpu": Profile("configs/train/beta_vitb16.yaml", "cuda", 64, 1024, 2, 5, 20, "base", 10, None),
    # One thread: CI machines are shared, and OpenMP threads on busy cores spin (a tiny step
    # measured 3 s with 2 threads on 2 busy cores, 0.08 s with 1).
    "cpu-smoke": Profile("configs/train/beta_tiny.yaml", "cpu", 8, 64, 1, 1, 2, "tiny", 2, 1),
}


def cores() -> int:
    return len(os.sched_getaffinity(0))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds of steps ``warmup .. warmup + steps - 1`` (the step's argument), after the warm-up
    ones; the device is drained at both ends."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    synchronize(device)
    return time.perf_counter() - start


def release(device: torch.device) -> None:
    """Free what the last part left, so the next one's peak memory is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def take(batch: Batch, n: int) -> Batch:
    return Batch(**{f.name: getattr(batch, f.name)[:n] for f in dataclasses.fields(batch)})


def lowered_on_oom(measure: Callable[[int], dict], batch_size: int, device: torch.device, what: str) -> dict:
    """``measure(batch_size)``, halving the batch while the GPU runs out of memory (said, and
    recorded as ``batch_note``)."""
    failed = []
    while True:
        try:
            result = measure(batch_size)
            break
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
        release(device)  # outside the except block: its traceback no longer holds the tensors
        print(f"note: {what}: out of memory at batch {batch_size}; trying {batch_size // 2}", flush=True)
        failed.append(batch_size)
        batch_size //= 2
    note = (
        f"out of memory at batch {', '.join(map(str, failed))}; lowered to {batch_size}" if failed else None
    )
    return {**result, "batch_size": batch_size, "batch_note": note}


def train_config(profile: Profile, dataset: str, objective: str, batch_size: int) -> TrainConfig:
    return load_config(
        TrainConfig,
        REPO / profile.config,
        [
            f"data.manifests=[{dataset}]",
            f"data.batch_size={batch_size}",
            f"data.workers={cores()}",
            f"objective.name={objective}",
            "model.pretrained=null",
            "grad_accum=1",
            f"device={profile.device}",
            "output=unused",
        ],
    )


def train_rate(
    cfg: TrainConfig, world: World, batches: list[Batch], profile: Profile, peak: float | None
) -> dict:
    """Our training step as ``train.py`` runs it (``pipeline.training.step``): DeepSpeed engine,
    the model's plan made on the host, ``compute_loss``, backward, step."""
    torch.manual_seed(cfg.seed)
    model = FineGrainedCLIP(cfg.model, cfg.objective.uses_beta_cal, cfg.objective.uses_regions)
    packs = [model.plan(b).texts for b in batches]
    engine = build_engine(cfg, model, world)
    try:
        dtype = torch.bfloat16 if precision_of(cfg, world) == "bf16" else torch.float32
        flops = FlopCount(enabled=True)

        def step(i: int) -> None:
            batch, plan = to_device(batches[i % len(batches)], model, world.device, dtype)
            with flops:
                forward_backward(engine, batch, plan, cfg.objective)
            engine.step()

        seconds = timed(step, profile.warmup, profile.steps, world.device)
        syncs = host_syncs(engine, model, batches[0], cfg, dtype, world.device)
    finally:
        engine.destroy()
    timed_packs = [packs[i % len(packs)] for i in range(profile.warmup, profile.warmup + profile.steps)]
    real = sum(p.real_tokens for p in timed_packs)
    samples_s = profile.steps * cfg.data.batch_size / seconds
    flops_per_sample = flops.per_micro_step / cfg.data.batch_size
    return {
        "samples_per_s": round(samples_s, 2),
        "text_tokens_per_s": round(real / seconds, 1),
        "padding": round(real / sum(p.positions for p in timed_packs), 3),
        "host_syncs_forward_loss": syncs,
        "gflops_per_sample": round(flops_per_sample / 1e9, 2),
        "mfu": mfu(samples_s, flops_per_sample, peak) if peak else None,
        "peak_memory_gib": peak_memory_gib(world.device),
    }


def host_syncs(
    engine, model: FineGrainedCLIP, batch: Batch, cfg: TrainConfig, dtype: torch.dtype, device: torch.device
) -> int | None:
    """Times our forward and loss make the host wait for the GPU (CUDA's sync debug mode), in one
    micro-step; the engine's backward and step are DeepSpeed's. None off CUDA."""
    if device.type != "cuda":
        return None
    batch, plan = to_device(batch, model, device, dtype)
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loss, _ = compute_loss(engine(batch, plan), batch, cfg.objective)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    engine.backward(loss)
    engine.step()
    return sum("synchroniz" in str(w.message) for w in caught)


def open_clip_rate(cfg: TrainConfig, world: World, batches: list[Batch], profile: Profile) -> dict:
    """A plain open_clip training step on the same backbone: fp32 weights, autocast bf16 on GPUs
    (fp32 on CPUs, as ours), ClipLoss, AdamW with the recipe's settings, logit scale clamped."""
    torch.manual_seed(cfg.seed)
    model = create_backbone(cfg.model).to(world.device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    loss_fn = open_clip.ClipLoss()
    bf16 = precision_of(cfg, world) == "bf16"

    def step(i: int) -> None:
        batch = batches[i % len(batches)]
        images = batch.images.to(world.device, non_blocking=True)
        texts = batch.captions.to(world.device, non_blocking=True)
        with torch.autocast(world.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(*model(images, texts))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))

    seconds = timed(step, profile.warmup, profile.steps, world.device)
    return {
        "samples_per_s": round(profile.steps * cfg.data.batch_size / seconds, 2),
        "peak_memory_gib": peak_memory_gib(world.device),
    }


def detector_rate(profile: Profile, workdir: str) -> dict:
    """The data-prep grounder as a GPU worker runs it, on a random-init OWLv2 of the real shape."""
    model_dir = save_random_owlv2(Path(workdir) / "owlv2", profile.detector)
    # the preset's grounding section alone: the rest of a PrepConfig means importing the Ray job
    section = yaml.safe_load((REPO / "configs/prep/detector.yaml").read_text())["grounding"]
    section["detector"]["model"] = str(model_dir)
    grounder = build_grounder(build(GroundingConfig, section, "grounding."))
    per_batch, queries = grounder.cfg.batch_size, grounder.cfg.max_queries
    requests = [grounding_request(i, queries) for i in range(per_batch * (1 + profile.detector_batches))]
    grounder.ground(requests[:per_batch])  # warm-up: loads the weights
    start = time.perf_counter()
    grounder.ground(requests[per_batch:])  # returns results on the CPU: nothing left queued
    seconds = time.perf_counter() - start
    return {
        "images_per_s": round(profile.detector_batches * per_batch / seconds, 2),
        "batch_size": per_batch,
        "queries_per_image": queries,
        "model": f"OWLv2 {profile.detector}, random init",
        "dtype": grounder.provenance()["dtype"],
        "image_processor": type(grounder.processor.image_processor).__name__,
        "peak_memory_gib": peak_memory_gib(grounder.device),
    }


def grounding_request(seed: int, queries: int) -> GroundingRequest:
    """A 512×384 noise image (the stored size at ``image.max_side: 512``) with ``queries`` noun chunks."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (384, 512, 3), dtype=np.uint8))
    texts = [f"a {rng.choice(list(COLOURS))} {rng.choice(SHAPES)}" for _ in range(queries)]
    starts = np.cumsum([0] + [len(t) + 1 for t in texts])
    phrases = [Phrase(t, 0, int(s), int(s) + len(t), "noun_chunk") for t, s in zip(texts, starts)]
    return GroundingRequest(512, 384, phrases, [Lexeme(t.split()[-1]) for t in texts], [], image)


class Report:
    """The JSON document; :meth:`part` runs one measurement, recording its error instead of stopping."""

    def __init__(self, **header) -> None:
        self.data: dict = {**header, "failed": []}

    def part(self, keys: tuple[str, ...], measure: Callable[[], dict]) -> dict | None:
        start = time.perf_counter()
        try:
            result = measure()
        except Exception as e:  # noqa: BLE001 - a failed part is reported; the other parts still run
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"}
            self.data["failed"].append(".".join(keys))
        result["part_seconds"] = round(time.perf_counter() - start, 1)  # set-up included: plans a GPU loan
        node = self.data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = result
        return None if "error" in result else result


def table(data: dict) -> str:
    def cell(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"{data['device']} · {data['model']} · {data['precision']} · ZeRO-{data['zero_stage']} · "
        f"peak {cell(data['peak_tflops'], '.0f')} TFLOP/s bf16 · {data['date']}",
        f"{'part':<12}{'batch':>6}{'samples/s':>11}{'text tok/s':>12}{'padding':>9}"
        f"{'GFLOP/sample':>14}{'MFU':>7}{'peak GiB':>10}{'syncs':>7}",
    ]
    for name in NAMES:
        r = data["objectives"].get(name, {})
        if "error" in r:
            lines.append(f"{name:<12}FAILED: {r['error']}")
            continue
        lines.append(
            f"{name:<12}{r['batch_size']:>6}{r['samples_per_s']:>11.1f}{r['text_tokens_per_s']:>12.0f}"
            f"{r['padding']:>9.3f}{r['gflops_per_sample']:>14.1f}{cell(r['mfu'], '.1%'):>7}"
            f"{cell(r['peak_memory_gib'], '.1f'):>10}{cell(r['host_syncs_forward_loss'], 'd'):>7}"
        )
        if r["batch_note"]:
            lines.append(f"{'':<12}note: {r['batch_note']}")
    for name, unit, key in (
        ("open_clip", "samples/s", "samples_per_s"),
        ("detector", "images/s", "images_per_s"),
        ("loader", "samples/s", "samples_per_s"),
    ):
        r = data.get(name, {})
        detail = r.get("error") or f"{r[key]:.1f} {unit} at batch {r['batch_size']}"
        lines.append(f"{name:<12}{detail}")
    ratio = data.get("clip_vs_open_clip")
    lines.append(f"our clip step / open_clip's: {cell(ratio, '.2f')}x (target >= 1.0)")
    lines.append("MFU targets: >= 40% clip, >= 35% beta and harmo. " + MFU_FORMULA)
    lines.append("syncs: host waits for the GPU in one micro-step's forward and loss (target 0)")
    lines.append(f"failed: {', '.join(data['failed']) or 'nothing'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code paths on CPU, tiny config")
    parser.add_argument("--out", default="runs/gpu_check.json", help="the JSON report")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak, for a GPU not in the table")
    parser.add_argument("--prepare", metavar="DIR", help="only make the loader's dataset in DIR (needs Ray)")
    parser.add_argument("--shards", type=int, default=16, help="with --prepare: one per loader worker there")
    parser.add_argument("--data", metavar="DIR", help="a dataset made by --prepare, instead of making one")
    args = parser.parse_args()
    profile = PROFILES["cpu-smoke" if args.cpu_smoke else "gpu"]
    if args.prepare:
        print(prepare(profile.records, args.prepare, shards=args.shards))
        return 0
    if profile.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no GPU visible; --cpu-smoke runs the same code paths on the CPU", file=sys.stderr)
        return 2
    if profile.threads:
        torch.set_num_threads(profile.threads)
    with socket.socket() as s:  # one process, no launcher: its own rendezvous port
        s.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_PORT", str(s.getsockname()[1]))
    world = init_distributed(profile.device)
    device_name = torch.cuda.get_device_name(world.device) if world.device.type == "cuda" else "cpu"
    base = train_config(profile, "unused", "clip", profile.batch_size)
    report = Report(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        profile="cpu-smoke" if args.cpu_smoke else "gpu",
        device=device_name,
        cores=cores(),
        **environment(),  # the commit, Python and package versions the figures belong to
        config=profile.config,
        model=(
            f"{base.model.name} at {open_clip.get_model_config(base.model.name)['vision_cfg']['image_size']}"
            " px, "
            f"{base.model.context_length}-token text, random init"
        ),
        precision=precision_of(base, world),
        zero_stage=base.zero_stage,
        peak_tflops=args.peak_tflops or bf16_peak_tflops(device_name),
        mfu_formula=MFU_FORMULA,
        warmup_steps=profile.warmup,
        timed_steps=profile.steps,
    )
    with tempfile.TemporaryDirectory() as workdir:
        run_parts(report, profile, world, workdir, args.data)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.data, indent=1) + "\n")
    print(table(report.data))
    print(f"report: {out}")
    return 1 if report.data["failed"] else 0


def run_parts(report: Report, profile: Profile, world: World, workdir: str, data: str | None) -> None:
    """Loader, objectives, open_clip, detector, in that order; each needs only the loader's batches.
    ``data``: a dataset made beforehand (``--prepare``); else one is made here."""
    batches: list[Batch] = []

    def loader() -> dict:
        dataset = data or prepare(profile.records, workdir, shards=cores())
        cfg = train_config(profile, dataset, "clip", profile.batch_size)
        rate, made = loader_rate(cfg, profile.loader_rounds)
        batches.extend(made)
        return {
            "samples_per_s": round(rate, 1),
            "batch_size": cfg.data.batch_size,
            "workers": cfg.data.workers,
        }

    def trained(name: str, rate: Callable, batch_size: int) -> Callable[[], dict]:
        def measure(n: int) -> dict:
            if not batches:
                raise RuntimeError("no batches: the loader part failed")
            return rate(
                train_config(profile, "unused", name, n), world, [take(b, n) for b in batches], profile
            )

        return lambda: lowered_on_oom(measure, batch_size, world.device, name)

    report.part(("loader",), loader)
    peak = report.data["peak_tflops"]
    ours = {}
    for name in NAMES:
        rate = functools.partial(train_rate, peak=peak)
        ours[name] = report.part(("objectives", name), trained(name, rate, profile.batch_size))
        release(world.device)
    clip_batch = ours["clip"]["batch_size"] if ours["clip"] else profile.batch_size
    theirs = report.part(("open_clip",), trained("clip", open_clip_rate, clip_batch))
    release(world.device)
    report.data["clip_vs_open_clip"] = (
        round(ours["clip"]["samples_per_s"] / theirs["samples_per_s"], 3) if ours["clip"] and theirs else None
    )
    report.part(("detector",), lambda: detector_rate(profile, workdir))


if __name__ == "__main__":
    sys.exit(main())
