"""Process group setup from the launcher's environment: torchrun or Slurm's srun, GPU or CPU.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; srun sets SLURM_PROCID, SLURM_NTASKS and
SLURM_LOCALID. Either works; MASTER_ADDR and MASTER_PORT name the rendezvous (the Slurm
scripts derive them from the allocation). No launcher at all means one process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.config import DeviceChoice
from pipeline.device import pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: DeviceChoice) -> World:
    """Initialise torch.distributed (nccl on GPUs, gloo on CPUs) and pick this rank's device."""
    rank = int(_env("RANK", "SLURM_PROCID", default="0"))
    size = int(_env("WORLD_SIZE", "SLURM_NTASKS", default="1"))
    local_rank = int(_env("LOCAL_RANK", "SLURM_LOCALID", default="0"))
    target = pick_device(device, local_rank)
    use_cuda = target.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    quiet_logs(rank, use_cuda)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(local_rank))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    import deepspeed  # heavy import: only once a run really starts

    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", auto_mpi_discovery=False)
    log.info(
        "%d rank(s) on %s, rendezvous %s:%s",
        size,
        target.type,
        os.environ["MASTER_ADDR"],
        os.environ["MASTER_PORT"],
    )
    return World(rank, size, local_rank, target)


def quiet_logs(rank: int, use_cuda: bool) -> None:
    """A job's log says each thing once: ranks other than 0 log warnings and errors only, and
    Python warnings come from rank 0. DeepSpeed is told the device we picked (instead of warning
    that it found no GPU), and torch's deprecations of the collectives DeepSpeed calls
    (``all_gather_into_tensor``, ``reduce_scatter_tensor``) are not shown: nothing a user can
    act on."""
    if rank:
        logging.getLogger().setLevel(logging.WARNING)
        warnings.simplefilter("ignore")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_cuda else "cpu")
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. one rank got the preemption signal)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged element-wise over ranks: each rank's loss is its share of the global
    batch's loss (see ``objectives.collectives.masked_mean``), so their mean is the global batch's."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's name, shape, dtype and bytes: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, p in module.named_parameters():
        data = p.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(data.shape)}{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_replicas(module: torch.nn.Module, step: int) -> None:
    """Fail on every rank unless all ranks hold bit-identical parameters (ZeRO stages 0-2).

    Data parallelism is only correct while the replicas agree: a missed or partial gradient
    all-reduce, a nondeterministic kernel or a faulty node makes them drift apart silently,
    and the loss curve does not show it. Rank 0 logs the digest and the hosts it covers.
    """
    if not dist.is_initialized():
        return
    mine = (parameter_digest(module), socket.gethostname())
    everyone: list[tuple[str, str]] = [mine] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if len({digest for digest, _ in everyone}) > 1:
        detail = ", ".join(f"rank {r} on {host}: {digest[:16]}" for r, (digest, host) in enumerate(everyone))
        raise RuntimeError(f"step {step}: parameters differ across ranks ({detail})")
    if dist.get_rank() == 0:
        hosts = sorted({host for _, host in everyone})
        log.info(
            "step %d: parameters sha256 %s on all %d rank(s) (hosts %s)",
            step,
            mine[0][:16],
            len(everyone),
            ",".join(hosts),
        )


@dataclass(frozen=True)
class ReplicaCheck:
    """:func:`check_replicas` every ``every`` steps, and at the step a run starts or resumes from
    (0: never)."""

    every: int

    def check(self, module: torch.nn.Module, step: int, start: bool = False) -> None:
        if self.every and (start or step % self.every == 0):
            check_replicas(module, step)


def shutdown() -> None:
    """Destroy the process group once a run is over, also when it failed: on every rank, once.
    DeepSpeed's clone of the world group goes with it, so that a later run in this process (a
    test, a notebook) starts afresh instead of broadcasting over a destroyed group."""
    if dist.is_initialized():
        dist.destroy_process_group()
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _env(*names: str, default: str) -> str:
    return next((os.environ[n] for n in names if os.environ.get(n)), default)
