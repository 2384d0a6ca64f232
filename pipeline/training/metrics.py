"""Step metrics: throughput, MFU, and the JSONL log that curves are drawn from (rank 0 only)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from torch.utils.flop_counter import FlopCounterMode

from pipeline.batch import Batch


def text_tokens(batch: Batch) -> int:
    """Tokens of the valid text slots, up to and including each end token."""
    lengths = batch.tokens.argmax(dim=-1) + 1
    return int((lengths * batch.token_mask).sum())


class FlopCount:
    """Counts the FLOPs of one real training micro-step (forward + backward), for MFU.

    Measured, not estimated from a formula: the dispatcher counts every matmul and attention
    of this model, objective and batch shape. Done once; shapes are fixed per run.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled  # MFU is reported on GPUs only; elsewhere counting is wasted work
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
    """One JSON object per logged step in ``metrics.jsonl``. A run that starts at ``start_step``
    continues the file from there: records of later steps (logged after the checkpoint it resumes
    from, by a run that then died) are dropped, so every step appears once."""

    def __init__(self, path: Path, enabled: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        if enabled and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start_step
            ]
            path.write_text("".join(f"{line}\n" for line in kept))
        self._file = path.open("a") if enabled else None
        self._since = time.perf_counter()
        self._samples = self._tokens = 0

    def count(self, samples: int, tokens: int) -> None:
        self._samples += samples
        self._tokens += tokens

    def write(
        self,
        step: int,
        losses: dict[str, float],
        lrs: dict[str, float],
        world_size: int,
        flops_per_sample: float | None,
        peak_tflops: float,
        gpu: bool,
        skipped_samples: int,
    ) -> dict:
        """Rates since the last write, over all ranks (every rank sees the same batch size);
        ``skipped_samples``: bad samples the loaders have replaced so far, all ranks."""
        elapsed = max(time.perf_counter() - self._since, 1e-9)
        samples_s = self._samples * world_size / elapsed
        record = {
            "step": step,
            **losses,
            **{f"lr_{k}": v for k, v in lrs.items()},
            "samples_per_s": round(samples_s, 2),
            "tokens_per_s": round(self._tokens * world_size / elapsed, 1),
            "skipped_samples": skipped_samples,
        }
        if gpu and flops_per_sample:
            record["mfu"] = round(samples_s * flops_per_sample / (peak_tflops * 1e12 * world_size), 4)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        self._since, self._samples, self._tokens = time.perf_counter(), 0, 0
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
