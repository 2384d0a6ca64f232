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
from pipeline.training.distributed import World, mean_over_ranks

log = logging.getLogger(__name__)


def text_tokens(batch: Batch) -> torch.Tensor:
    """Tokens of the valid text slots, up to and including each end token (0-d, on the device)."""
    lengths = batch.tokens.argmax(dim=-1) + 1
    return (lengths * batch.token_mask).sum()


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
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start_step
            ]
            path.write_text("".join(f"{line}\n" for line in kept))
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

    def count(self, batch: Batch, terms: dict[str, torch.Tensor]) -> None:
        """One micro-step: its batch (samples, tokens) and its loss terms, kept on the device."""
        for name, value in terms.items():
            self._terms[name] = self._terms.get(name, 0) + value.detach()
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
        terms, micro_steps = self._terms, self._micro_steps
        self._terms, self._micro_steps = {}, 0
        if step % self.log_every and not last:
            return None
        local = [*(terms[n].double() / micro_steps for n in terms), self._tokens.double()]
        local.append(torch.tensor(float(skipped), dtype=torch.float64, device=self.world.device))
        reduced = dict(zip([*terms, "tokens", "skipped"], mean_over_ranks(torch.stack(local)).tolist()))
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
            flops_per_sample = self.flops.per_micro_step / self._batch_size
            record["mfu"] = round(samples_s * flops_per_sample / (self.peak_tflops * 1e12 * ranks), 4)
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

    def close(self) -> None:
        self.bar.close()
        self.log.close()
