"""The training loop's components, each alone: metrics, checkpoint decisions, preemption."""

import json
import os
import signal
import time

import pytest
import torch

from pipeline.batch import Batch
from pipeline.config import UserError
from pipeline.training.checkpoint import CheckpointManager, prune, tag_of
from pipeline.training.config import CheckpointConfig
from pipeline.training.distributed import World
from pipeline.training.metrics import LossNotFinite, MetricsLog, StepMetrics, mfu, text_tokens
from pipeline.training.preemption import SIGNALS, Preemption

WORLD = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"))


def _log(run_dir, steps, start_step):
    log = MetricsLog(run_dir, enabled=True, start_step=start_step, tensorboard=True)
    for step in steps:
        log.write({"step": step, "time": 1e9 + step, "loss": float(step)})
    log.close()


def _board(run_dir) -> dict[int, float]:
    """The loss scalars of ``run_dir/tensorboard``, as TensorBoard shows them (later wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("loss")}


def test_a_resumed_run_replaces_what_the_dead_run_logged_after_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _log(tmp_path, range(1, 8), start_step=0)  # died after logging step 7; last checkpoint at step 5
    _log(tmp_path, range(6, 11), start_step=5)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == list(range(1, 11))
    assert _board(tmp_path) == {step: float(step) for step in range(1, 11)}
    _log(tmp_path, [1, 2], start_step=0)  # a fresh run (no checkpoint) in the same folder starts over
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def _batch(lengths: list[int]) -> Batch:
    """One image with a text slot per length; a slot's end token (the largest id) at its last position."""
    tokens = torch.zeros(1, len(lengths), 8, dtype=torch.long)
    for k, n in enumerate(lengths):
        tokens[0, k, :n] = torch.arange(1, n + 1)
    return Batch(
        images=torch.zeros(1, 3, 4, 4),
        tokens=tokens,
        token_mask=torch.ones(1, len(lengths), dtype=torch.bool),
        text_ids=torch.zeros(1, len(lengths), dtype=torch.long),
        boxes=torch.zeros(1, 0, 4),
        region_slot=torch.zeros(1, 0, dtype=torch.long),
        region_mask=torch.zeros(1, 0, dtype=torch.bool),
    )


def test_text_tokens_counts_each_slot_up_to_its_end_token_and_stays_a_tensor():
    count = text_tokens(_batch([3, 5]))
    assert torch.is_tensor(count) and int(count) == 8


def test_step_metrics_logs_every_n_steps_and_the_last_with_the_mean_over_micro_steps(tmp_path):
    optimizer = torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)], "name": "backbone"}], lr=0.5
    )
    metrics = StepMetrics(
        tmp_path, WORLD, log_every=2, peak_tflops=1.0, steps=(0, 5), epoch_samples=4, tensorboard=True
    )
    records = []
    for step in range(1, 6):
        for micro in range(2):  # grad_accum 2: the step's loss is the mean of its micro-steps'
            metrics.count(_batch([3]), {"loss": torch.tensor(float(step + micro))})
        records.append(metrics.end_step(step, 2 * step, optimizer, skipped=step, last=step == 5))
    metrics.close()
    assert [r is not None for r in records] == [False, True, False, True, True]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 4, 5]
    assert [r["loss"] for r in logged] == [2.5, 4.5, 5.5]
    assert logged[0]["lr_backbone"] == 0.5 and logged[-1]["skipped_samples"] == 5
    assert logged[0]["tokens_per_s"] > 0 and "mfu" not in logged[0]  # MFU on GPUs only
    assert [(r["samples_seen"], r["epoch"]) for r in logged] == [(4, 1.0), (8, 2.0), (10, 2.5)]
    assert all(abs(r["time"] - time.time()) < 60 for r in logged)
    assert _board(tmp_path) == {2: 2.5, 4: 4.5, 5: 5.5}


def test_mfu_is_the_samples_flops_over_the_peak_of_the_ranks_that_did_them():
    assert mfu(100.0, 1e12, 400.0, ranks=2) == 0.125 and mfu(100.0, 1e12, 400.0) == 0.25


def test_checkpoints_are_due_every_n_steps_and_when_forced(tmp_path):
    manager = CheckpointManager(tmp_path, CheckpointConfig(every=3, keep_last=1), WORLD)
    assert [s for s in range(1, 8) if manager.due(s, force=s == 7)] == [3, 6, 7]
    assert manager.latest() is None  # no checkpoint yet: a new run


def test_pruning_keeps_the_newest_tags_and_touches_nothing_else(tmp_path):
    for step in (5, 10, 15, 20):
        (tmp_path / tag_of(step)).mkdir()
    (tmp_path / "step-notes").mkdir()  # not a tag of ours
    (tmp_path / "latest").write_text(tag_of(5))  # a pointer still naming an old tag: kept
    prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest",
        "step-00000005",
        "step-00000015",
        "step-00000020",
        "step-notes",
    ]


def test_a_preemption_signal_is_acted_on_at_the_next_checking_step():
    preemption = Preemption(torch.device("cpu"), check_every=3)
    try:
        assert not any(preemption.agreed(step) for step in range(1, 7))
        os.kill(os.getpid(), signal.SIGUSR1)
        assert [preemption.agreed(step) for step in (7, 8, 9)] == [False, False, True]
    finally:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)


def test_a_torn_last_line_is_dropped_and_a_corrupt_one_skipped_on_resume(tmp_path, caplog):
    """A node killed mid-write leaves half a record; a resume goes on without it."""
    path = tmp_path / "metrics.jsonl"
    _log(tmp_path, range(1, 5), start_step=0)
    lines = path.read_text().splitlines()
    lines[1] = "\x00\x00garbage"  # a disk fault in the middle
    path.write_bytes(("\n".join([*lines, "[1]", '{"step": "7"}', '{"step": 5, "loss": 0.'])).encode())
    with caplog.at_level("WARNING"):
        _log(tmp_path, [5, 6], start_step=4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3, 4, 5, 6]
    assert "line 2 is not a metrics record" in caplog.text and "line 7 is torn" in caplog.text


def _count_losses(metrics: StepMetrics, losses: list[float], grad_accum: int = 1) -> list:
    optimizer = torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)], "name": "backbone"}], lr=0.5
    )
    records = []
    for step, loss in enumerate(losses, 1):
        for _ in range(grad_accum):
            metrics.count(_batch([3]), {"loss": torch.tensor(loss)})
        records.append(metrics.end_step(step, step, optimizer, skipped=0, last=step == len(losses)))
    return records


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_loss_stops_the_run_at_the_next_check_naming_its_step(tmp_path, bad):
    metrics = StepMetrics(
        tmp_path, WORLD, log_every=5, peak_tflops=None, steps=(0, 20), epoch_samples=4, tensorboard=False
    )
    with pytest.raises(LossNotFinite, match=rf"^step 3: loss is {bad}: training diverged") as stopped:
        _count_losses(metrics, [1.0, 1.0, bad, 1.0, 1.0, 1.0])  # checked at the logged step 5
    assert isinstance(stopped.value, UserError) and len(str(stopped.value).splitlines()) == 1
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # no record of a diverged step
    with pytest.raises(LossNotFinite, match="^step 3: "):
        metrics.check_finite(7)  # as before a checkpoint: still no checkpoint, nor export
    metrics.close()


def test_a_finite_loss_passes_every_check(tmp_path):
    metrics = StepMetrics(
        tmp_path, WORLD, log_every=2, peak_tflops=None, steps=(0, 4), epoch_samples=4, tensorboard=False
    )
    assert [r is not None for r in _count_losses(metrics, [1.0, 2.0, 3.0, 4.0])] == [False, True, False, True]
    metrics.check_finite(4)
    metrics.close()
