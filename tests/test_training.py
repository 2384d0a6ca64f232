"""Training with real DeepSpeed ZeRO on CPU: 2 ranks over gloo, launched by torchrun."""

import hashlib
import json
from pathlib import Path

import open_clip
import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from helpers import REPO, one_rank, torchrun

from pipeline.__main__ import main
from pipeline.batch import Batch
from pipeline.config import load_config
from pipeline.models import FineGrainedCLIP
from pipeline.models.loading import load_exported, load_fine_grained
from pipeline.training.config import TrainConfig

pytestmark = pytest.mark.integration
TOLERANCE = 1e-6  # resumed vs uninterrupted loss; CPU fp32 with fixed seeds is in fact bitwise equal


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _args(shards: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.manifests=[{shards}]",
        f"output={out}",
        "data.batch_size=8",
        "data.workers=1",
        "log_every=1",
        "checkpoint.every=2",
        *extra,
    ]


# ZeRO-1 is ZeRO-2 without gradient partitioning: one DeepSpeed optimizer class (stage_1_and_2.py)
# saves and loads both, so stage 2 covers its resume (stage 0 trains across nodes in test_multinode.py).
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_resumes_exactly(generated_shards, tmp_path, stage):
    """The loss goes down; a run stopped after step 4 and resumed matches an uninterrupted run at
    every later step."""
    common = (f"zero_stage={stage}", "steps=8", "optim.warmup_steps=2")
    whole, split = tmp_path / "whole", tmp_path / "split"
    torchrun("configs/train/beta_tiny.yaml", *_args(generated_shards, whole, *common))
    first = torchrun("configs/train/beta_tiny.yaml", *_args(generated_shards, split, *common, "stop_after=4"))
    assert "stopped at step 4" in first.stdout
    second = torchrun("configs/train/beta_tiny.yaml", *_args(generated_shards, split, *common))
    assert "resumed from" in second.stderr and "finished at step 8" in second.stdout
    expected, got = losses(whole), losses(split)
    assert sum(expected[s] for s in (6, 7, 8)) < sum(expected[s] for s in (1, 2, 3))
    assert sorted(got) == sorted(expected) == list(range(1, 9))
    for step in range(5, 9):
        assert abs(got[step] - expected[step]) <= TOLERANCE, (step, got[step], expected[step])
    assert sorted(p.name for p in (split / "checkpoints").glob("step-*")) == [
        "step-00000006",
        "step-00000008",
    ]


def test_zero3_checkpoint_resumes_on_another_number_of_ranks(generated_shards, tmp_path):
    """2 ranks → 1: a universal checkpoint re-cuts ZeRO-3's partitions, and the optimizer comes
    back whole: each param group its own learning rate and weight decay, one AdamW step per step
    (DeepSpeed 0.19 loses both on this path; ``checkpoint._repair_zero3_universal_groups``).
    Bit-exact weights across a resize are checked on two Slurm nodes in test_multinode.py."""
    common = ("zero_stage=3", "steps=4", "optim.warmup_steps=2")
    whole, resized = tmp_path / "whole", tmp_path / "resized"
    torchrun("configs/train/beta_tiny.yaml", *_args(generated_shards, whole, *common))
    torchrun("configs/train/beta_tiny.yaml", *_args(generated_shards, resized, *common, "stop_after=2"))
    second = torchrun(
        "configs/train/beta_tiny.yaml", *_args(generated_shards, resized, *common, "grad_accum=2"), ranks=1
    )
    assert "re-partitioned from 2 to 1 ranks" in second.stderr and "finished at step 4" in second.stdout
    assert not (resized / "checkpoints/universal").exists()

    def learning_rates(run_dir: Path) -> list[dict[str, float]]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k.startswith("lr_")} for row in rows]

    assert learning_rates(resized) == learning_rates(whole) and len(learning_rates(whole)[-1]) == 4
    optim = torch.load(
        resized / "checkpoints/step-00000004/zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False
    )["optimizer_state_dict"]["optimizer_state_dict"]
    assert [float(state["step"]) for state in optim["state"].values()] == [4.0] * 4
    assert [(g["name"], g["weight_decay"]) for g in optim["param_groups"]] == [
        ("backbone_no_decay", 0.0),
        ("backbone", 0.1),
        ("pooler_no_decay", 0.0),
        ("pooler", 0.1),
    ]
    # the resized run's weights load like any other: the export consolidates the 1-rank checkpoint
    assert load_fine_grained(resized / "export") is not None


def test_harmo_loss_decreases_and_export_loads_into_open_clip(generated_shards, tmp_path):
    out = tmp_path / "harmo"
    run = torchrun(
        "configs/train/harmo_tiny.yaml",
        *_args(generated_shards, out, "zero_stage=3", "steps=30", "checkpoint.every=30"),
    )
    log = run.stdout + run.stderr  # said once per job, not once per rank; no warning nobody can act on
    once = ("pipeline.training.loop: model ", "2 rank(s) on cpu")
    assert all(log.count(line) == 1 for line in once), log[-3000:]
    assert "Warning" not in log and "[WARNING]" not in log, log[-3000:]
    curve = losses(out)
    assert sum(curve[s] for s in range(26, 31)) < sum(curve[s] for s in range(1, 6))

    cfg = load_config(
        TrainConfig,
        REPO / "configs/train/harmo_tiny.yaml",
        [f"output={out}", f"data.manifests=[{generated_shards}]"],
    )
    exported = load_exported(out / "export")
    trained = FineGrainedCLIP(cfg.model, with_pooler=False, with_region_head=True)
    trained.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints")), strict=True)
    trained.eval()
    images = torch.randn(2, 3, 128, 128)
    texts = [["a large red circle in the upper left", "a red circle"], ["two blue squares", "blue squares"]]
    tokenizer = open_clip.get_tokenizer(cfg.model.name, context_length=cfg.model.context_length)
    batch = Batch.from_lists(
        images, texts, [[((0, 0, 64, 64), 1)], []], tokenizer, num_slots=2, num_regions=1
    )
    with torch.no_grad():
        out_train = trained(batch)
        image = torch.nn.functional.normalize(exported.encode_image(images), dim=-1)
        text = torch.nn.functional.normalize(exported.encode_text(batch.captions), dim=-1)
    torch.testing.assert_close(image, out_train.image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, out_train.text, atol=1e-5, rtol=1e-5)

    # The export command, from a checkpoint folder: the whole model, region head included, comes back.
    again = tmp_path / "again"
    assert main(["export", str(out / "checkpoints/step-00000030"), str(again)]) == 0
    with torch.no_grad():
        out_loaded = load_fine_grained(again)(batch)
    for name in ("image", "text", "regions", "phrases"):
        torch.testing.assert_close(getattr(out_loaded, name), getattr(out_train, name), atol=1e-5, rtol=1e-5)

    # Lineage travels from the run into every checkpoint and export.
    for folder in (out, out / "checkpoints/step-00000030", out / "export", again):
        lineage = json.loads((folder / "lineage.json").read_text())
        assert (
            lineage["datasets"][0]["sha256"]
            == hashlib.sha256((generated_shards / "dataset.json").read_bytes()).hexdigest()
        )
        assert lineage["config"]["zero_stage"] == 3 and lineage["packages"]["deepspeed"]


@pytest.mark.parametrize("nan_at", [3, None])
def test_a_diverged_run_stops_without_checkpoint_or_export_and_every_run_ends_its_group(
    tmp_path, monkeypatch, nan_at
):
    """In this process, one rank: the loss of micro-step ``nan_at`` made NaN stops the run at the
    next check (here the last step's checkpoint) naming that step; with or without, the process
    group is destroyed when the run ends."""
    import torch.distributed as dist
    from test_loader import chunks, make_sample, write_dataset

    from pipeline.training import loop
    from pipeline.training.metrics import LossNotFinite

    data = write_dataset(tmp_path / "data", chunks([make_sample("a", i) for i in range(16)], 4))
    cfg = load_config(
        TrainConfig,
        REPO / "configs/train/beta_tiny.yaml",
        [f"data.manifests=[{data}]", f"output={tmp_path}/run", "device=cpu", "data.batch_size=4"]
        + ["data.workers=0", "steps=4", "log_every=10", "checkpoint.every=2", "tensorboard=false"],
    )
    calls = []

    def forward_backward(*args, **kwargs):
        loss, terms = real(*args, **kwargs)
        calls.append(loss)
        return (loss * float("nan") if len(calls) == nan_at else loss), terms

    real = loop.forward_backward
    monkeypatch.setattr(loop, "forward_backward", forward_backward)
    one_rank(monkeypatch)
    if nan_at is None:
        assert loop.train(cfg).export.is_dir()
    else:
        with pytest.raises(LossNotFinite, match=r"^step 3: loss is nan: training diverged"):
            loop.train(cfg)
        assert not (tmp_path / "run" / "export").exists()
        assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-00000002"]
    assert not dist.is_initialized()
