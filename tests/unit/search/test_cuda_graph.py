"""GraphedStep on CPU through a fake CUDA backend: warm-up, capture, replay, self-check, fallback, outcome.

The fake graph "captures" by recording the function and its static inputs (and undoing what the
call did: a real capture runs no kernel), and "replays" by calling the function again on the
static input buffers and copying the results into the static outputs, so replays really compute.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import smoke_overrides

from unrealnas.config import compose_config
from unrealnas.cuda_graph import (
    GraphedStep,
    GraphError,
    enable_cudnn_benchmark,
    graph_outcome,
)
from unrealnas.errors import ConfigError, UserError
from unrealnas.search.graphs import use_cuda_graph
from unrealnas.train import loop as train_loop
from unrealnas.train import retrain as train_retrain
from unrealnas.train.graphed import train_cuda_graph_off
from unrealnas.train.loop import LoopOptions, build_optimizer, train_state, train_step


class FakeGraph:
    def __init__(self) -> None:
        self.fn = self.inputs = self.outputs = None
        self.replays, self.released = 0, False


class FakeBackend:
    """CudaGraphBackend's interface on CPU; ``fail_capture`` raises in capture, ``tamper`` perturbs each replay."""

    def __init__(self, state, fail_capture: Exception | None = None, tamper=None) -> None:
        self.state, self.fail_capture, self.tamper = state, fail_capture, tamper
        self.graphs: list[FakeGraph] = []
        self.side_runs = self.syncs = 0
        self.live_at_new_graph: list[int] = []  # graphs not yet released when a new one was made

    def device(self, device):
        return contextlib.nullcontext()

    def stream(self, device):
        return object()

    @contextlib.contextmanager
    def on_stream(self, stream):
        self.side_runs += 1
        yield

    def graph(self) -> FakeGraph:
        self.live_at_new_graph.append(sum(not g.released for g in self.graphs))
        self.graphs.append(FakeGraph())
        return self.graphs[-1]

    def capture(self, graph, stream, fn, inputs):
        if self.fail_capture is not None:
            raise self.fail_capture
        before = [t.detach().clone() for t in self.state()]
        outputs = fn(*inputs)
        with torch.no_grad():  # a capture records kernels without running them
            for t, b in zip(self.state(), before, strict=True):
                t.copy_(b)
        graph.fn, graph.inputs = fn, inputs
        # not computed yet
        graph.outputs = [o.detach().clone().fill_(float("nan") if o.is_floating_point() else -1) for o in outputs]
        return graph.outputs

    def replay(self, graph) -> None:
        for out, got in zip(graph.outputs, graph.fn(*graph.inputs), strict=True):
            out.copy_(got)
        graph.replays += 1
        if self.tamper is not None:
            self.tamper()

    def release(self, graph) -> None:
        graph.released = True

    def synchronize(self, device) -> None:
        self.syncs += 1


OPTS = LoopOptions(epochs=1, lr=0.1, momentum=0.9, weight_decay=1e-3, grad_clip=5.0)


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    net.train()
    return net, build_optimizer(net, OPTS)


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]


def _eager(n: int):
    """Weights, buffers, momentum and per-step losses of ``n`` plain eager steps."""
    net, opt = _setup()
    losses = [train_step(net, opt, x, y, OPTS)[0].clone() for x, y in _batches(n)]
    return [t.clone() for t in train_state(net, opt)], losses


def _graphed(n: int, keys=None, calls: list[int] | None = None, lines: list[str] | None = None, **kw):
    """``n`` steps through a GraphedStep on the fake backend (``kw``: GraphedStep's and the fake's options)."""
    net, opt = _setup()

    def fn(x, y):
        if calls is not None:
            calls.append(1)
        return train_step(net, opt, x, y, OPTS)

    state = lambda: train_state(net, opt)  # noqa: E731
    backend = FakeBackend(state, kw.pop("fail_capture", None), kw.pop("tamper_with", None) and
                          (lambda: _tamper(net)))
    kw.setdefault("checked", lambda: dict(net.named_parameters()))
    step = GraphedStep(fn, state=state, say=(lines if lines is not None else []).append,
                       setting_name="train.cuda_graph", backend=backend, **kw)
    losses = [step(0 if keys is None else keys[i], x, y)[0].clone() for i, (x, y) in enumerate(_batches(n))]
    return step, backend, [t.clone() for t in train_state(net, opt)], losses


def _tamper(net: nn.Module) -> None:
    with torch.no_grad():
        net[0].weight.mul_(1.001)  # what a graph with a stale buffer would leave: close, not equal


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_warmup_then_capture_then_replay():
    calls: list[int] = []
    step, backend, _, _ = _graphed(2, calls=calls)
    assert backend.graphs == [] and step.captures == 0 and backend.side_runs == 2 and len(calls) == 2
    step, backend, _, _ = _graphed(3, calls=(calls := []))
    # third call: the eager self-check run (side stream), the capture (recorded) and the first replay
    assert len(backend.graphs) == 1 and backend.graphs[0].replays == 1 and backend.side_runs == 3
    assert len(calls) == 2 + 3 and step.captures == 1 and step.self_checks == 1 and backend.syncs == 1
    step, backend, _, _ = _graphed(6, calls=(calls := []))
    assert backend.graphs[0].replays == 4 and len(calls) == 5 + 3 and step.captures == 1 and step.self_checks == 1


def test_self_checked_capture_applies_each_step_once():
    want3, losses3 = _eager(3)
    step, _, got3, glosses3 = _graphed(3)
    # the self-check ran the step eagerly, restored the snapshot, then replayed: one step, not two
    assert _equal(got3, want3) and not _equal(got3, _eager(4)[0])
    assert all(torch.equal(a, b) for a, b in zip(glosses3, losses3, strict=True))
    want, losses = _eager(7)
    step, _, got, glosses = _graphed(7)
    assert _equal(got, want) and all(torch.equal(a, b) for a, b in zip(glosses, losses, strict=True))
    assert step.outcome == {"cuda_graph": "used", "reason": None, "captures": 1, "self_checks": 1}


def test_replay_copies_into_the_static_inputs():
    step, backend, _, losses = _graphed(5)
    graph = backend.graphs[0]
    x, y = _batches(5)[-1]
    assert torch.equal(graph.inputs[0], x) and torch.equal(graph.inputs[1], y)  # the last batch, copied in
    assert graph.inputs[0] is not x and step.inputs[0] is graph.inputs[0]  # one static buffer, reused
    _, want = _eager(5)
    assert torch.equal(losses[3], want[3]) and torch.equal(losses[4], want[4]) and not torch.equal(losses[3], losses[4])


def test_same_key_replays_new_key_recaptures():
    keys = ["a"] * 5 + ["b"] * 5
    step, backend, got, _ = _graphed(10, keys=keys)
    assert step.captures == 2 and step.self_checks == 2 and len(backend.graphs) == 2
    assert backend.graphs[0].released and not backend.graphs[1].released
    assert backend.live_at_new_graph == [0, 0]  # the old graph was released before the new capture
    assert [g.replays for g in backend.graphs] == [3, 3]  # "b": two eager warm-ups again, then capture
    assert _equal(got, _eager(10)[0])


def test_failed_capture_logs_one_line_and_continues_eagerly():
    lines: list[str] = []
    err = RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors might be reported")
    step, backend, got, losses = _graphed(6, lines=lines, fail_capture=err)
    want, want_losses = _eager(6)
    assert _equal(got, want) and all(torch.equal(a, b) for a, b in zip(losses, want_losses, strict=True))
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("CUDA graph capture failed: RuntimeError: operation not permitted when stream is "
                               "capturing CUDA kernel errors")
    assert lines[0].endswith("; continuing eagerly; set train.cuda_graph=off to skip the attempt")
    assert backend.side_runs == 3 and all(g.replays == 0 for g in backend.graphs)  # nothing graphed after
    out = step.outcome
    assert out["cuda_graph"] == "fell back" and "operation not permitted" in out["reason"]
    assert out["captures"] == 0 and out["self_checks"] == 0


def test_replay_differing_from_eager_falls_back():
    lines: list[str] = []
    step, backend, got, _ = _graphed(6, lines=lines, tamper_with=True)
    assert _equal(got, _eager(6)[0])  # the tampered replay was undone, the step ran eagerly once
    assert len(lines) == 1 and "graph replay differs from eager (0.weight, rel err 1.0e-03 > 1e-05)" in lines[0]
    assert step.outcome["cuda_graph"] == "fell back" and step.outcome["captures"] == step.outcome["self_checks"] == 1
    assert backend.graphs[0].released and backend.graphs[0].replays == 1
    # a looser tolerance accepts the same replay
    step, _, _, _ = _graphed(4, tamper_with=True, rtol=1e-2)
    assert step.outcome["cuda_graph"] == "used"


def test_strict_raises_one_line():
    with pytest.raises(GraphError) as info:
        _graphed(4, tamper_with=True, strict=True)
    msg = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in msg
    assert msg.startswith("CUDA graph capture failed: graph replay differs from eager (0.weight, rel err")
    assert "train.cuda_graph=on" in msg and "auto" in msg
    with pytest.raises(GraphError, match="RuntimeError: no capture"):
        _graphed(4, fail_capture=RuntimeError("no capture"), strict=True)


def test_guard_only_without_checked():
    calls: list[int] = []
    step, backend, got, _ = _graphed(5, calls=calls, checked=None)
    assert step.captures == 1 and step.self_checks == 0 and len(calls) == 2 + 2 + 2  # no eager check run
    assert _equal(got, _eager(5)[0])
    step, _, _, _ = _graphed(2)
    assert step.outcome["cuda_graph"] == "used" and step.outcome["captures"] == 0 and "warm-up" in step.outcome["reason"]


def test_checked_without_state_is_refused():
    with pytest.raises(ValueError, match="checked needs state"):
        GraphedStep(lambda: (), checked=lambda: [])


def test_graph_outcome_and_settings(monkeypatch):
    assert graph_outcome(None, "CPU device") == {"cuda_graph": "off", "reason": "CPU device", "captures": 0,
                                                 "self_checks": 0}
    with pytest.raises(ConfigError, match="search.cuda_graph='yes' is invalid: choose one of auto, on, off"):
        use_cuda_graph("yes", torch.device("cpu"), "darts")  # a bench's plain string, checked against the schema
    with pytest.raises(ConfigError, match="train.cuda_graph='1' is invalid: choose one of auto, on, off"):
        train_cuda_graph_off("1", torch.device("cpu"), "sgd", None, False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert not enable_cudnn_benchmark("cpu") and torch.backends.cudnn.benchmark is False
    assert enable_cudnn_benchmark(torch.device("cuda", 1)) and torch.backends.cudnn.benchmark is True


def test_retrain_records_the_graph_outcome(tmp_path: Path, cifar_root, monkeypatch):
    tiny = ("genotype=DARTS_V2", "train.layers=3", "train.init_channels=4", "train.batch_size=8",
            "train.max_images=32", "train.max_eval_images=16", "train.drop_path=0", "train.cuda_graph=auto",
            "device=cpu")

    def run(run_id: str) -> tuple[dict, dict]:
        run_dir = train_retrain.run_retrain(compose_config(smoke_overrides(tmp_path, f"data.root={cifar_root}", *tiny,
                                                                           f"train.run_id={run_id}")))
        return (json.loads((run_dir / "result.json").read_text()),
                torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"])

    eager, eager_w = run("eager")
    assert eager["cuda_graph"] == {"cuda_graph": "off", "captures": 0, "self_checks": 0,
                                   "reason": "train.cuda_graph=auto: capturing needs a CUDA device (this run is on cpu)"}
    # the graphed loop on CPU: the policy says yes, the step goes through the fake backend
    monkeypatch.setattr(train_retrain, "train_cuda_graph_off", lambda *a: None)
    made: list[GraphedStep] = []

    def fake_graphed(fn, **kw):
        made.append(GraphedStep(fn, backend=FakeBackend(kw["state"]), **kw))
        return made[-1]

    monkeypatch.setattr(train_loop, "GraphedStep", fake_graphed)
    graphed, graphed_w = run("graphed")
    assert made and made[0].setting_name == "train.cuda_graph" and not made[0].strict
    assert made[0].checked is not None  # drop path 0: self-checked
    # 4 steps per epoch, 2 epochs: each epoch is a new key (warm-up 2, capture + check, 1 replay)
    assert graphed["cuda_graph"] == {"cuda_graph": "used", "reason": None, "captures": 2, "self_checks": 2}
    assert graphed_w.keys() == eager_w.keys() and all(torch.equal(graphed_w[k], eager_w[k]) for k in eager_w)


def test_bench_graph_row_through_the_fake(monkeypatch):
    from unrealnas.benchmarks import retrain as bench

    made: list[GraphedStep] = []

    def fake_graphed(fn, **kw):
        made.append(GraphedStep(fn, backend=FakeBackend(kw["state"]), **kw))
        return made[-1]

    monkeypatch.setattr(bench, "use_train_cuda_graph", lambda *a: True)
    monkeypatch.setattr(bench, "GraphedStep", fake_graphed)
    overrides = ["preset=smoke", "device=cpu", "train.layers=3", "train.init_channels=4", "train.batch_size=4"]
    row = bench.bench_target("cifar10", [*overrides, "train.drop_path=0"], steps=1)
    assert row["graph_images_per_s"] > 0 and made[0].outcome == {"cuda_graph": "used", "reason": None,
                                                                 "captures": 1, "self_checks": 1}
    row = bench.bench_target("cifar10", [*overrides, "train.drop_path=0.2"], steps=1)
    assert made[1].checked is None and made[1].outcome["self_checks"] == 0 and row["graph_images_per_s"] > 0
