"""Precision: fp32 search by default (TF32 on CUDA), bf16 retraining on CUDA, the precision named in records."""

import torch

from unrealnas.config import compose_config
from unrealnas.runtime import autocast_dtype, precision_name


def test_search_defaults_to_fp32_and_retraining_to_bf16_on_cuda():
    cfg = compose_config([])
    assert cfg.search.amp == "off" and cfg.train.amp == "auto"
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_dtype(cuda, "off") is None and autocast_dtype(cpu, "off") is None
    assert autocast_dtype(cuda, "auto") == "bf16" and autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(cpu, "bf16") == "bf16"


def test_precision_names():
    assert precision_name(torch.device("cpu"), None) == "fp32"
    assert precision_name(torch.device("cpu"), "bf16") == "bf16-autocast"
    assert precision_name(torch.device("cuda"), "fp16") == "fp16-autocast"
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        assert precision_name(torch.device("cuda"), None) == "fp32+tf32"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert precision_name(torch.device("cuda"), None) == "fp32"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
