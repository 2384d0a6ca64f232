"""Device choice and the GPU peak table MFU reads."""

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.device import bf16_peak_tflops, device_peak_tflops, pick_device
from pipeline.training.config import DataConfig, TrainConfig


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", None),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_peak_comes_from_the_device_name(name, peak):
    assert bf16_peak_tflops(name) == peak


def test_no_peak_off_a_gpu():
    assert device_peak_tflops(torch.device("cpu")) is None


def test_cpu_is_chosen_or_cuda_refused_without_a_gpu():
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="^device: cuda requested"):
            pick_device("cuda")


def test_a_peak_given_must_be_positive():
    assert TrainConfig(DataConfig(manifests=("d",), batch_size=1), output="o").peak_tflops is None
    with pytest.raises(ValueError, match="^peak_tflops"):
        TrainConfig(DataConfig(manifests=("d",), batch_size=1), output="o", peak_tflops=0)
