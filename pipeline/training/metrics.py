"""Step metrics: loss terms, throughput, MFU; the JSONL log curves are drawn from, and the bar.

Loss terms stay on the device until a step is logged: reading a CUDA tensor's value waits for the
GPU, and doing so per micro-step would stall the host from queueing the next one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from pipeline.batch import Batch
from pipeline.config import UserError
from pipeline.training.distributed import World, any_rank, mean_over_ranks

log = logging.getLogger(__name__)


def text_tokens(batch: Batch) -> torch.Tensor:
    """Tokens of the valid text slots, up to and including each end token (0-d, on the device)."""
    lengths = batch.tokens.argmax(dim=-1) + 1
    return (lengths * batch.token_mask).sum()


class LossNotFinite(UserError, ValueError):
    """The loss became NaN or inf: the weights are lost, and the config (its learning rates) is
    what a user changes."""


class FlopCount:
    """Counts the FLOPs of one real training micro-step (forward + backward), for MFU.

    Measured, not estimated from a formula: the dispatcher counts every matmul and attention
    of this model, objective and batch shape. Done once; shapes are fixed per run.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.per_micro_step: int | None = None
        self._mode: FlopCounterMode | None = None

    def __enter__(self):
        if self.enabled and self.per_micro_step is None:
            self._mode = FlopCounterMode(display=False)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self.per_micro_step = self._mode.get_total_flops()
            self._mode = None


class MetricsLog:
    """One JSON object per logged step in ``metrics.jsonl`` and, with ``tensorboard``, its numbers
    as scalars in ``tensorboard/``. A run that starts at ``start_step`` continues both from there:
    records of later steps (logged after the checkpoint it resumes from, by a run that then died)
    are dropped, so every step appears once."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int = 0, tensorboard: bool = False) -> None:
        path = run_dir / "metrics.jsonl"
        if enabled and path.exists():
            path.write_text("".join(f"{line}\n" for line in kept_records(path, start_step)))
        self._file = path.open("a") if enabled else None
        self._board = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

            self._board = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._board is not None:
            for name, value in record.items():
                if name not in ("step", "time"):
                    self._board.add_scalar(name, value, record["step"], walltime=record["time"])
            self._board.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._board is not None:
            self._board.close()


def kept_records(path: Path, start_step: int) -> list[str]:
    """The lines of ``path`` a run resumed at ``start_step`` keeps: records up to that step. A torn
    last line (the node died mid-write) is dropped, and so, with a warning, is any other line that
    is not a record (a disk fault, an edit): a resume never fails on its log."""
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    kept = []
    for number, line in enumerate(lines, 1):
        step = _step_of(line)
        if step is None and line.strip():
            why = "torn (the run died writing it)" if number == len(lines) else "not a metrics record"
            log.warning("%s: line %d is %s; dropped", path, number, why)
        elif step is not None and step <= start_step:
            kept.append(line)
    return kept


def _step_of(line: str) -> int | None:
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError, RecursionError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


class StepMetrics:
    """What the loop reports, and when: every ``log_every`` steps and at the run's last step.

    It holds the run's constants (ranks, FLOPs per sample, the GPU's peak) so the loop only hands
    it each micro-step's batch and loss terms. Logging is the one point where ranks exchange
    values (an all-reduce of the last step's terms) and the host reads them.
    """

    def __init__(
        self,
        run_dir: Path,
        world: World,
        log_every: int,
        peak_tflops: float | None,
        steps: tuple[int, int],
        epoch_samples: int,
        tensorboard: bool,
    ):
        start, total = steps
        self.epoch_samples = epoch_samples
        self.world, self.log_every, self.peak_tflops = world, log_every, peak_tflops
        # MFU on a GPU whose peak is known; elsewhere counting is wasted work
        self.flops = FlopCount(enabled=world.device.type == "cuda" and peak_tflops is not None)
        self.log = MetricsLog(run_dir, enabled=world.is_main, start_step=start, tensorboard=tensorboard)
        self.total = total
        # a bar on a terminal; in a log file (Slurm's) its redraws become one endless line, so
        # there each logged step is a line of its own
        self.bar = tqdm(
            total=total,
            initial=start,
            disable=not (world.is_main and sys.stderr.isatty()),
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=5,
        )
        self._terms: dict[str, torch.Tensor] = {}  # this step's, summed over its micro-steps
        self._micro_steps = self._samples = self._batch_size = 0
        self._tokens = torch.zeros((), dtype=torch.long, device=world.device)
        self._since = time.perf_counter()
        # the first step whose loss was not finite (0: none) and that loss, kept on the device
        self._step, self._checked = start, start
        self._bad_step = torch.zeros((), dtype=torch.long, device=world.device)
        self._bad_loss = torch.zeros((), dtype=torch.float64, device=world.device)

    def count(self, batch: Batch, terms: dict[str, torch.Tensor]) -> None:
        """One micro-step: its batch (samples, tokens) and its loss terms, kept where they are made
        (the device; the host for values made from the host batch) until a step is logged."""
        for name, value in terms.items():
            self._terms[name] = self._terms.get(name, 0) + value.detach()
        loss = terms["loss"].detach().double()
        first = ~torch.isfinite(loss) & (self._bad_step == 0)
        self._bad_step = torch.where(first, self._step + 1, self._bad_step)
        self._bad_loss = torch.where(first, loss, self._bad_loss)
        self._micro_steps += 1
        self._batch_size = batch.images.shape[0]
        self._samples += self._batch_size
        self._tokens += text_tokens(batch)

    def end_step(
        self, step: int, samples: int, optimizer: torch.optim.Optimizer, skipped: int, last: bool
    ) -> dict | None:
        """Close optimizer step ``step``; on a logged step, reduce over ranks and write a record.
        ``samples``: seen by all ranks so far; ``skipped``: bad samples this rank's loader has
        replaced so far."""
        self.bar.update(1)
        self._step = step
        terms, micro_steps = self._terms, self._micro_steps
        self._terms, self._micro_steps = {}, 0
        if step % self.log_every and not last:
            return None
        self.check_finite(step)
        local = [*(terms[n].double() / micro_steps for n in terms), self._tokens.double()]
        local.append(torch.tensor(float(skipped), dtype=torch.float64, device=self.world.device))
        local = torch.stack([value.to(self.world.device) for value in local])  # some are the host's
        reduced = dict(zip([*terms, "tokens", "skipped"], mean_over_ranks(local).tolist()))
        elapsed = max(time.perf_counter() - self._since, 1e-9)
        ranks = self.world.size
        samples_s = self._samples * ranks / elapsed
        record = {
            "step": step,
            "time": round(time.time(), 3),
            "samples_seen": samples,
            "epoch": round(samples / self.epoch_samples, 4),
            **{n: reduced[n] for n in terms},
            **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups},
            "samples_per_s": round(samples_s, 2),
            "tokens_per_s": round(reduced["tokens"] * ranks / elapsed, 1),
            "skipped_samples": round(reduced["skipped"] * ranks),
        }
        if self.flops.per_micro_step and self.peak_tflops:
            per_sample = self.flops.per_micro_step / self._batch_size
            record["mfu"] = mfu(samples_s, per_sample, self.peak_tflops, ranks)
        self.log.write(record)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", sps=record["samples_per_s"])
        if self.world.is_main and self.bar.disable:
            log.info(
                "step %d/%d: loss %.4f, %.1f samples/s",
                step,
                self.total,
                record["loss"],
                record["samples_per_s"],
            )
        self._since, self._samples = time.perf_counter(), 0
        self._tokens.zero_()
        return record

    def check_finite(self, step: int) -> None:
        """Raise :class:`LossNotFinite` on every rank if any rank's loss was NaN or inf at a step
        since the last check (one all-reduce: called at logged steps, and before a checkpoint)."""
        if step == self._checked:
            return
        self._checked = step
        bad_step = int(self._bad_step.item())
        if any_rank(bad_step != 0, self.world.device):
            where = f"step {bad_step}: loss is {self._bad_loss.item()}"
            if not bad_step:
                where = f"by step {step}: another rank's loss is not finite"
            raise LossNotFinite(
                f"{where}: training diverged and stops here, with no checkpoint or export of these "
                "weights (lower optim.lr or optim.head_lr, or raise optim.warmup_steps)"
            )

    def close(self) -> None:
        self.bar.close()
        self.log.close()


def mfu(samples_per_s: float, flops_per_sample: float, peak_tflops: float, ranks: int = 1) -> float:
    """Model FLOPs utilisation, the one formula training logs and ``gpu_check`` reports: the
    FLOPs the samples of a second took, over the peak of the ``ranks`` that did them."""
    return round(samples_per_s * flops_per_sample / (peak_tflops * 1e12 * ranks), 4)
