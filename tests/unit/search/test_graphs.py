"""CUDA-graph switches (search.cuda_graph, train.cuda_graph): when they engage and their one-line refusals.

The capture itself needs a GPU (tools/gpu_check.py); here: the resolution rules, and that the
retrain bench reports the ops of a step.
"""

import pytest
import torch

from unrealnas.benchmarks.retrain import bench_target
from unrealnas.errors import ConfigError
from unrealnas.search.graphs import use_cuda_graph
from unrealnas.train.graphed import use_train_cuda_graph

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def test_search_cuda_graph_resolution():
    assert use_cuda_graph("auto", GPU, "darts") and use_cuda_graph("auto", GPU, "sgas_c1")
    assert not use_cuda_graph("auto", CPU, "darts") and not use_cuda_graph("auto", GPU, "darts2")
    assert not use_cuda_graph("off", GPU, "darts")
    for setting, device, method, needle in (("on", CPU, "darts", "needs a CUDA device"),
                                            ("on", GPU, "darts2", "second-order"), ("yes", GPU, "darts", "choose one of auto, on, off")):
        with pytest.raises(ConfigError, match=needle):
            use_cuda_graph(setting, device, method)


def test_train_cuda_graph_resolution():
    assert use_train_cuda_graph("auto", GPU, "sgd", "bf16", False)
    assert not use_train_cuda_graph("auto", CPU, "sgd", None, False)
    assert not use_train_cuda_graph("auto", GPU, "adam", None, False)
    assert not use_train_cuda_graph("auto", GPU, "sgd", "fp16", False)
    assert not use_train_cuda_graph("auto", GPU, "sgd", None, True)
    assert not use_train_cuda_graph("off", GPU, "sgd", None, False)
    for args, needle in ((("on", CPU, "sgd", None, False), "CUDA device"), (("on", GPU, "adam", None, False), "sgd"),
                         (("on", GPU, "sgd", "fp16", False), "fp16"), (("on", GPU, "sgd", None, True), "DDP")):
        with pytest.raises(ConfigError, match=needle):
            use_train_cuda_graph(*args)


def test_bench_retrain_reports_ops_per_step():
    row = bench_target("cifar10", ["preset=smoke", "device=cpu", "train.layers=3", "train.init_channels=4",
                                   "train.batch_size=4"], steps=1)
    assert row["ops_per_step"] > row["kernel_ops"] > 100 and row["images_per_s"] > 0
    assert "graph_images_per_s" not in row  # off on CPU
