"""The replica check on two gloo ranks: quiet on identical weights, loud on one differing bit."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port, init_gloo

from pipeline.training.distributed import check_replicas, parameter_digest


def worker(rank: int, port: int, out_dir: str, perturb: bool) -> None:
    init_gloo(rank, 2, port)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    if perturb and rank == 1:
        with torch.no_grad():  # the next float up: one bit in one weight
            model.weight[0, 0] = torch.nextafter(model.weight[0, 0], torch.tensor(1.0))
    try:
        check_replicas(model, step=7)
        outcome = "ok"
    except RuntimeError as error:
        outcome = str(error)
    (Path(out_dir) / f"rank{rank}.txt").write_text(outcome)
    dist.destroy_process_group()


@pytest.mark.integration  # two ranks by mp.spawn
@pytest.mark.parametrize("perturb", [False, True])
def test_check_replicas_fails_every_rank_on_one_differing_bit(tmp_path, perturb):
    mp.spawn(worker, args=(free_port(), str(tmp_path), perturb), nprocs=2)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    if not perturb:
        assert outcomes == ["ok", "ok"]
    else:
        for outcome in outcomes:  # every rank raises, so the job stops as a whole
            assert outcome.startswith("step 7: parameters differ across ranks") and "rank 1 on " in outcome


def test_parameter_digest_sees_values_and_names():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    digest = parameter_digest(model)
    assert parameter_digest(model) == digest
    with torch.no_grad():
        model.bias.add_(1.0)
    assert parameter_digest(model) != digest
    renamed = torch.nn.Sequential(model)  # same tensors, other names ("0.weight")
    assert parameter_digest(renamed) != parameter_digest(model)
