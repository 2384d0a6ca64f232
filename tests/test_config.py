import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pipeline.config import ConfigError, build, load_config
from pipeline.prep.config import PrepConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Inner:
    size: int = 3
    ratio: float = 0.5
    pair: tuple[int, int] = (1, 2)

    def __post_init__(self):
        if self.size < 0:
            raise ValueError(f"size: must be >= 0, got {self.size}")


@dataclass(frozen=True)
class Outer:
    name: str
    mode: Literal["a", "b"] = "a"
    maybe: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner:\n  size: 5\n")
    cfg = load_config(Outer, path, ["inner.ratio=2", "mode=b", "inner.pair=[3, 4]", "maybe=null"])
    assert cfg == Outer(name="x", mode="b", inner=Inner(size=5, ratio=2.0, pair=(3, 4)))
    # PyYAML reads "5e-3" (no decimal point) as a string; a float field still takes it.
    assert load_config(Outer, None, ["name=x", "inner.ratio=5e-3"]).inner.ratio == 0.005


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["nme=x"], "nme: unknown key"),
        (["name=x", "inner.sise=1"], "inner.sise: unknown key"),
        (["name=x", "inner.size=big"], "inner.size: expected int"),
        (["name=x", "inner.ratio=fast"], "inner.ratio: expected float, got 'fast'"),
        (["name=x", "inner.size=-1"], "inner.size: must be >= 0"),
        (["name=x", "mode=c"], "mode: 'c' is not one of 'a', 'b'"),
        (["name=x", "inner.pair=7"], "inner.pair: expected a list"),
        (["name=x", "inner=3"], "inner: expected a mapping"),
        (["mode=a"], "name: required"),
        (["name"], "expected key=value"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(Outer, None, overrides)


def test_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file|No such file"):
        load_config(Outer, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, tmp_path / "list.yaml")


def test_prep_preset_loads_and_validates():
    cfg = load_config(PrepConfig, "configs/prep/default.yaml", ["input.index=x.jsonl", "output=out"])
    assert cfg.ray.workers is None and cfg.ray.worker_num_cpus == 1.0
    with pytest.raises(ConfigError, match="ray.workers"):
        load_config(
            PrepConfig, "configs/prep/default.yaml", ["input.index=x.jsonl", "output=out", "ray.workers=0"]
        )
    with pytest.raises(ConfigError, match="ray.text_actors: unknown key"):
        load_config(
            PrepConfig,
            "configs/prep/default.yaml",
            ["input.index=x.jsonl", "output=out", "ray.text_actors=[3, 1]"],
        )
    with pytest.raises(ConfigError, match="input.index: required"):
        build(PrepConfig, {"output": "out", "input": {}})
    with pytest.raises(ConfigError, match="image.jpeg_quality"):
        build(PrepConfig, {"output": "o", "input": {"index": "i.jsonl"}, "image": {"jpeg_quality": 0}})


@pytest.mark.parametrize("path", sorted((REPO / "configs/train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_training_preset_loads(path):
    from pipeline.training.config import TrainConfig

    cfg = load_config(TrainConfig, path)
    assert cfg.steps >= 1 and cfg.data.manifests


@pytest.mark.parametrize("path", sorted((REPO / "configs/prep").glob("*.yaml")), ids=lambda p: p.name)
def test_every_prep_preset_loads(path):
    cfg = load_config(PrepConfig, path, ["input.index=x.jsonl", "output=out"])
    assert cfg.output == "out"


def test_replica_check_needs_replicas():
    from pipeline.training.config import TrainConfig

    preset = REPO / "configs/train/beta_tiny.yaml"
    assert load_config(TrainConfig, preset, ["replica_check_every=5"]).replica_check_every == 5
    with pytest.raises(ConfigError, match="replica_check_every: ZeRO-3 partitions the parameters"):
        load_config(TrainConfig, preset, ["replica_check_every=5", "zero_stage=3"])


def test_an_override_that_is_not_yaml_names_its_key():
    with pytest.raises(ConfigError, match=r"^name: '\[unclosed' is not a YAML value"):
        load_config(PrepConfig, None, ["input.index=x.jsonl", "output=out", "name=[unclosed"])


@pytest.mark.parametrize(
    "preset, override, message",
    [
        ("prep/default.yaml", "ray.worker_timeout_s=.nan", "ray.worker_timeout_s: must be > 0"),
        ("prep/default.yaml", "ray.worker_num_gpus=.nan", "ray.worker_num_gpus: must be >= 0"),
        ("train/beta_tiny.yaml", "optim.lr=.nan", "optim.lr: must be > 0"),
    ],
)
def test_nan_is_no_number_a_config_accepts(preset, override, message):
    """NaN fails every comparison: a check written as ``value <= 0`` lets it through."""
    from pipeline.training.config import TrainConfig

    cls, extra = (
        (PrepConfig, ["input.index=x.jsonl", "output=o"]) if preset.startswith("prep") else (TrainConfig, [])
    )
    with pytest.raises(ConfigError, match=message):
        load_config(cls, REPO / "configs" / preset, [*extra, override])


def test_logs_hold_our_lines_and_warnings_not_open_clip_chatter():
    """open_clip logs which config and file it loaded through the root logger on every model
    built, and that weights were initialised randomly when we are about to load them."""
    code = """
import logging
from pipeline.config import setup_logging
from pipeline.models import TINY_MODEL, FineGrainedCLIP, ModelConfig
setup_logging()
FineGrainedCLIP(ModelConfig(name=TINY_MODEL, pretrained=None), with_pooler=False, with_region_head=False)
logging.getLogger("pipeline.ours").info("our line")
logging.warning("a library's warning")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stderr.splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "pipeline.ours: our line",
        "root: a library's warning",
    ], lines


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=.inf",
        "optim.lr=1e999",  # YAML 1.1 reads it as a string, float() as inf
        "optim.head_lr=.inf",
        "optim.lr_end=.nan",
        "optim.head_lr_end=-.inf",
        "optim.warmup_start_lr=.inf",
        "optim.grad_clip=.inf",
        "optim.weight_decay=.nan",
        "optim.eps=.inf",
        "optim.betas=[0.9, .nan]",
        "objective.alpha=.inf",
        "objective.lambda_gr=.nan",
        "peak_tflops=.inf",
        "data.crop_scale=[0.5, .inf]",
    ],
)
def test_every_float_key_must_be_finite(override):
    """NaN and ±inf anywhere in a config are refused, naming the key, whether or not the key has
    a range check of its own."""
    from pipeline.training.config import TrainConfig

    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config(TrainConfig, REPO / "configs/train/beta_tiny.yaml", [override])


def test_range_checks_refuse_non_finite_values_in_configs_made_in_code():
    from pipeline.training.config import OptimConfig

    for value in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lr: must be > 0"):
            OptimConfig(lr=value)
        with pytest.raises(ValueError, match="weight_decay: must be >= 0"):
            OptimConfig(weight_decay=value)


def test_an_int_too_large_for_a_float_key_is_a_config_error():
    from pipeline.training.config import TrainConfig

    with pytest.raises(ConfigError, match="^optim.lr: expected float"):
        load_config(TrainConfig, REPO / "configs/train/beta_tiny.yaml", ["optim.lr=1" + "0" * 400])
