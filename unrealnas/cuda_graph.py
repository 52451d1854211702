"""Replay a training iteration as one CUDA graph, guarded and checked against eager: capture once per key.

A step of these small-kernel networks is launch-bound on a GPU; capturing the whole step (forward,
backward, clipping, optimizer) and replaying it removes the per-kernel launch cost. The captured
function is the same one the eager path calls; this module adds static input buffers, the eager
warm-up (real steps, on a side stream, as ``torch.cuda.graph`` requires), the capture, the replay,
and two safety nets, because a graph that captures wrongly trains silently wrong:

* **guard**: warm-up, capture and the first replay run inside ``try``; any exception logs one line
  ("CUDA graph capture failed: ...; continuing eagerly; ...") and that iteration and every later one
  run eagerly. ``strict=True`` (the user asked for ``on``) raises :class:`GraphError` instead.
* **self-check**: at each capture, the state (``state()``: every tensor the step mutates) is
  snapshotted, the iteration runs eagerly, the eager values of ``checked()`` are kept, the snapshot
  is copied back in place, the graph is captured and replayed, and the replayed ``checked()``
  values must match the eager ones (relative L2 error <= ``rtol`` per tensor). The step is applied
  exactly once: the eager run is undone, the replay does the real step (on a mismatch the replay is
  undone and the step runs eagerly).

The caller guarantees what capture needs: no host sync inside the step, fixed shapes per key, Adam
with ``capturable=True``, and a warm-up of at least one iteration when the optimizer allocates its
state lazily (SGD momentum, Adam moments). A new key recaptures (the old graph is released first).

Every CUDA call goes through a backend (:class:`CudaGraphBackend`); tests pass a fake one that
"captures" by recording the function and replays by calling it again, so all of this runs on CPU.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch

from unrealnas.errors import ConfigError

WARMUP_ITERATIONS = 2  # eager iterations (real steps, on a side stream) before each capture
RTOL = 1e-5  # self-check: relative L2 error allowed between replayed and eager checked tensors
_TINY = 1e-30
_UNSET = object()

Tensors = Sequence[torch.Tensor]
Checked = Callable[[], "Sequence[torch.Tensor] | Mapping[str, torch.Tensor]"]


class GraphError(ConfigError):
    """``*.cuda_graph=on`` and the graph could not be captured, or its replay differs from eager."""


def enable_cudnn_benchmark(device: torch.device | str) -> bool:
    """Let cuDNN pick the fastest convolution algorithms (fixed shapes per graph key); CUDA only."""
    if torch.device(device).type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    return True


def graph_outcome(step: GraphedStep | None, reason_off: str) -> dict[str, Any]:
    """The ``cuda_graph`` entry of result.json: ``step.outcome``, or "off" with ``reason_off`` when none was built."""
    if step is not None:
        return step.outcome
    return {"cuda_graph": "off", "reason": reason_off, "captures": 0, "self_checks": 0}


class CudaGraphBackend:
    """The CUDA calls :class:`GraphedStep` makes (the seam tests replace with a CPU fake)."""

    def device(self, device: torch.device | None) -> contextlib.AbstractContextManager:
        """Make ``device`` current (streams and the graph's memory pool are created there)."""
        return contextlib.nullcontext() if device is None else torch.cuda.device(device)

    def stream(self, device: torch.device | None) -> Any:
        """A side stream on ``device`` (None: the current device)."""
        return torch.cuda.Stream(device=device)

    @contextlib.contextmanager
    def on_stream(self, stream: Any) -> Iterator[None]:
        """Run the body on ``stream``, ordered after the current stream's work and before its later work."""
        current = torch.cuda.current_stream(stream.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            yield
        current.wait_stream(stream)

    def graph(self) -> Any:
        """A new, empty graph."""
        return torch.cuda.CUDAGraph()

    def capture(self, graph: Any, stream: Any, fn: Callable[..., Tensors], inputs: Sequence[Any]) -> Tensors:
        """Capture ``fn(*inputs)`` into ``graph`` on ``stream``; return its (static) outputs, not yet computed."""
        # thread_local: a capture in this thread does not fail because of unrelated CUDA calls elsewhere
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            return fn(*inputs)

    def replay(self, graph: Any) -> None:
        """Launch the captured work on the current stream (of the capture's device)."""
        graph.replay()

    def release(self, graph: Any) -> None:
        """Free the graph and its memory pool (tensors still alive keep their blocks)."""
        graph.reset()

    def synchronize(self, device: torch.device | None) -> None:
        """Wait for ``device``: makes an asynchronous replay error surface here."""
        torch.cuda.synchronize(device)


class _Mismatch(Exception):
    """The replayed step differs from the eager one (internal: turned into the fallback)."""


class GraphedStep:
    """``step(key, *tensors)``: eagerly for the first iterations of each key, then as a replayed CUDA graph.

    ``fn`` is the iteration (returns tensors). Keyword-only:

    * ``device``: the run's device; streams, capture and memory pool are placed there (None: current).
    * ``state()``: every tensor the step mutates in place (weights, buffers, optimizer state); with it
      a failure is undone before the eager fallback, and the self-check can undo its eager run.
    * ``checked()``: tensors compared between the eager run and the replay at each capture (a
      sequence, or a mapping name -> tensor for readable reasons); None skips the compare (guard only).
    * ``say``: where the one-line fallback notice goes (default: stderr).
    * ``setting_name``: the setting named in messages (``search.cuda_graph``, ``train.cuda_graph``).
    * ``strict``: raise :class:`GraphError` instead of falling back (the user set ``on``).
    * ``backend``: the CUDA calls (default :class:`CudaGraphBackend`).
    """

    def __init__(self, fn: Callable[..., Tensors], warmup: int = WARMUP_ITERATIONS, *,
                 device: torch.device | str | None = None, state: Callable[[], Tensors] | None = None,
                 checked: Checked | None = None, rtol: float = RTOL, say: Callable[[str], None] | None = None,
                 setting_name: str = "search.cuda_graph", strict: bool = False,
                 backend: CudaGraphBackend | None = None) -> None:
        if checked is not None and state is None:
            raise ValueError("GraphedStep: checked needs state (the self-check must undo its eager run)")
        self.fn, self.warmup = fn, warmup
        self.device = None if device is None else torch.device(device)
        self.state, self.checked, self.rtol = state, checked, rtol
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.setting_name, self.strict = setting_name, strict
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.key: Hashable | object = _UNSET
        self.seen = 0  # eager warm-up iterations run for the current key
        self.graph: Any = None
        self.inputs: list[torch.Tensor | None] = []
        self.outputs: Tensors = ()
        self.stream: Any = None
        self.captures = 0
        self.self_checks = 0
        self.calls = 0
        self.fell_back = False
        self.reason: str | None = None

    @property
    def outcome(self) -> dict[str, Any]:
        """``{"cuda_graph": "used" | "fell back", "reason", "captures", "self_checks"}`` (for result.json)."""
        reason = self.reason
        if not self.fell_back and self.captures == 0:
            reason = f"no capture: {self.calls} iteration(s), none past the {self.warmup}-iteration warm-up of its key"
        return {"cuda_graph": "fell back" if self.fell_back else "used", "reason": reason,
                "captures": self.captures, "self_checks": self.self_checks}

    def __call__(self, key: Hashable, *args: torch.Tensor | None) -> Tensors:
        """Run one iteration on ``args`` (None entries allowed: part of the key)."""
        self.calls += 1
        if self.fell_back:
            return self.fn(*args)
        if key != self.key:
            self.release()
            self.key, self.seen = key, 0
        if self.graph is None:
            return self._guarded(args)
        for buf, a in zip(self.inputs, args, strict=True):
            if buf is not None and a is not None:
                buf.copy_(a)
        self.backend.replay(self.graph)
        return self.outputs

    def release(self) -> None:
        """Drop the current graph (its static inputs and outputs first); the next call warms up again."""
        graph, self.graph, self.inputs, self.outputs = self.graph, None, [], ()
        if graph is not None:
            self.backend.release(graph)

    # -- warm-up, capture, self-check: all inside the guard -------------------------------------------

    def _guarded(self, args: Sequence[torch.Tensor | None]) -> Tensors:
        snapshot = self._snapshot()
        try:
            with self.backend.device(self.device):
                if self.stream is None:
                    self.stream = self.backend.stream(self.device)
                if self.seen < self.warmup:
                    with self.backend.on_stream(self.stream):
                        out = self.fn(*args)
                    self.seen += 1
                    return out
                return self._capture(args, snapshot)
        except Exception as e:  # noqa: BLE001 - any failure of the graph path falls back to eager
            reason = str(e) if isinstance(e, _Mismatch) else _one_line(e)
            self.release()
            if snapshot is not None:
                self._restore(snapshot)  # undo whatever part of the step ran (warm-up, check or replay)
            return self._fall_back(reason, args, e)

    def _capture(self, args: Sequence[torch.Tensor | None], snapshot: list[torch.Tensor] | None) -> Tensors:
        reference: list[torch.Tensor] = []
        if self.checked is not None and snapshot is not None:
            with self.backend.on_stream(self.stream):
                eager = self.fn(*args)
            if len(list(self.state())) != len(snapshot):
                # the step allocated new state (lazy optimizer buffers): it cannot be undone, so this
                # was one more warm-up iteration; capture on the next one
                self.seen += 1
                return eager
            reference = [t.detach().clone() for _, t in self._checked_items()]
            self._restore(snapshot)
        self.inputs = [None if a is None else a.detach().clone() for a in args]
        self.graph = self.backend.graph()
        self.outputs = self.backend.capture(self.graph, self.stream, self.fn, self.inputs)
        self.captures += 1
        # capturing records the kernels without running them: the first replay runs this iteration
        self.backend.replay(self.graph)
        self.backend.synchronize(self.device)
        if reference:
            self.self_checks += 1
            self._compare(reference)
        return self.outputs

    def _compare(self, reference: list[torch.Tensor]) -> None:
        items = self._checked_items()
        if len(items) != len(reference):
            raise _Mismatch(f"graph replay differs from eager ({len(items)} checked tensors, eager had "
                            f"{len(reference)})")
        if not items:
            return
        errs = torch.stack([(a.detach().double() - b.double()).norm() / b.double().norm().clamp_min(_TINY)
                            for (_, a), b in zip(items, reference, strict=True)]).cpu().tolist()
        bad = [(e, name) for e, (name, _) in zip(errs, items, strict=True) if not e <= self.rtol]  # NaN is bad
        if bad:
            err, name = max(bad, key=lambda b: float("inf") if b[0] != b[0] else b[0])
            raise _Mismatch(f"graph replay differs from eager ({name}, rel err {err:.1e} > {self.rtol:g})")

    def _checked_items(self) -> list[tuple[str, torch.Tensor]]:
        got = self.checked()
        if isinstance(got, Mapping):
            return [(str(k), v) for k, v in got.items()]
        return [(f"checked tensor {i} of shape {tuple(t.shape)}", t) for i, t in enumerate(got)]

    def _snapshot(self) -> list[torch.Tensor] | None:
        return None if self.state is None else [t.detach().clone() for t in self.state()]

    def _restore(self, snapshot: list[torch.Tensor]) -> None:
        now = list(self.state())
        if len(now) != len(snapshot):
            raise RuntimeError(f"cannot undo a partial CUDA-graph step: the step created state ({len(snapshot)} "
                               f"tensors before, {len(now)} after)")
        with torch.no_grad():
            for t, s in zip(now, snapshot, strict=True):
                t.copy_(s)

    def _fall_back(self, reason: str, args: Sequence[torch.Tensor | None], error: Exception) -> Tensors:
        self.fell_back, self.reason = True, reason
        if self.strict:
            raise GraphError(f"CUDA graph capture failed: {reason}; {self.setting_name}=on does not continue "
                             f"eagerly: use {self.setting_name}=auto (falls back) or off") from error
        self.say(f"CUDA graph capture failed: {reason}; continuing eagerly; set {self.setting_name}=off to skip "
                 f"the attempt")
        return self.fn(*args)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "no message"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}"
