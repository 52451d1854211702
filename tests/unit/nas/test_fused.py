"""The fused supernet equals the per-edge one: logits, loss, gradients, BN state, state_dict, op count."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, vmap

from unrealnas.benchmarks.opcount import count_ops
from unrealnas.config import compose_config
from unrealnas.nas.genotype import UNDECIDED, num_edges
from unrealnas.nas.ops import NONE_INDEX, PRIMITIVES
from unrealnas.nas.supernet import SuperNet

torch.set_num_threads(1)

# SGAS state of a 4-node cell: decided edges (one op), pruned edges (0 = none), undecided (-1).
# normal: node 1 has two decided edges (4 -> sep3, 3 -> skip), so its third edge (2) is pruned;
# every edge from the second cell input (1, 3, 6, 10) is decided, so the first group reads one of two.
DECIDED_NORMAL = [UNDECIDED, 5, 0, 3, 4, UNDECIDED, 2, 1, UNDECIDED, UNDECIDED, 7, UNDECIDED, 2, 6]
DECIDED_REDUCE = [3, UNDECIDED, 4, UNDECIDED, UNDECIDED, 6, UNDECIDED, UNDECIDED, 0, 3, UNDECIDED, UNDECIDED,
                  UNDECIDED, 1]


def pair(decided: bool = False, nodes: int = 4, layers: int = 3, seed: int = 0) -> tuple[SuperNet, SuperNet]:
    """(per_edge, fused) supernets with the same random weights and alphas (and decisions)."""
    torch.manual_seed(seed)
    ref = SuperNet(4, 3, layers, nodes, fused=False)
    with torch.no_grad():
        for a in ref.arch_parameters():
            a.normal_(0, 0.7)
    if decided:
        ref.set_edge_ops(DECIDED_NORMAL, DECIDED_REDUCE)
    fused = SuperNet(4, 3, layers, nodes, fused=True)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def batch(n: int = 4, hw: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, hw, hw, generator=g), torch.randint(0, 3, (n,), generator=g)


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4, what: str = "") -> None:
    err = float((a.detach().double() - b.detach().double()).abs().max())
    scale = float(b.detach().double().abs().max())
    assert err <= rel * max(scale, 1e-6), f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def assert_same_grads(ref: SuperNet, fused: SuperNet, rel: float = 1e-4) -> None:
    # SGAS decisions are op-weight rows in the fused network: a switched-off op runs with weight 0, so
    # its weights get a zero gradient where the per-edge reference (which skips it) gets none
    grads = dict(fused.named_parameters())
    for name, p in ref.named_parameters():
        q = grads[name]
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), f"{name}: gradient through an op the reference skips"
        else:
            assert q.grad is not None, f"{name}: no gradient in the fused network"
            assert_rel_close(q.grad, p.grad, rel, name)


def switched_off(net: SuperNet, name: str) -> bool:
    """A parameter or buffer of an op an SGAS decision switched off (the engine puts those back)."""
    parts = name.split(".")
    if len(parts) < 6 or parts[0] != "cells" or parts[2] != "edges" or parts[4] != "ops":
        return False
    cell, edge, op = int(parts[1]), int(parts[3]), int(parts[5])
    code = net.edge_ops("reduce" if net.cells[cell].reduction else "normal")[edge]
    return code != UNDECIDED and op != code


def assert_same_state(ref: SuperNet, fused: SuperNet, rel: float = 1e-5) -> None:
    other = fused.state_dict()
    for name, t in ref.state_dict().items():
        if switched_off(ref, name):
            continue
        if t.dtype == torch.long:
            assert torch.equal(other[name], t), name
        else:
            assert_rel_close(other[name], t, rel, name)


@pytest.mark.parametrize("decided", [False, True], ids=["undecided", "sgas"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_logits_loss_and_gradients_match_per_edge(decided, train):
    ref, fused = pair(decided)
    if not train:
        x, _ = batch(seed=5)
        for net in (ref, fused):  # non-trivial running statistics first
            net(x)
            net.eval()
    x, y = batch()
    out_ref, out = ref(x), fused(x)
    assert_rel_close(out, out_ref, 1e-4, "logits")
    loss_ref, loss = ref.criterion(out_ref, y), fused.criterion(out, y)
    assert_rel_close(loss, loss_ref, 1e-5, "loss")
    loss_ref.backward()
    loss.backward()
    assert_same_grads(ref, fused)
    assert_same_state(ref, fused)
    if decided:  # decided and pruned rows move no weight of a switched-off op
        sep3 = PRIMITIVES.index("sep_conv_3x3")
        w = dict(fused.named_parameters())[f"cells.0.edges.1.ops.{sep3}.op.0.op.1.weight"]
        assert not w.grad.any()  # edge 1 is decided to sep_conv_5x5: its sep3 ran with weight 0


def test_bn_running_stats_and_weights_equal_after_sgd_steps():
    ref, fused = pair(decided=False)
    opts = [torch.optim.SGD(n.weight_parameters(), lr=0.05, momentum=0.9, foreach=True) for n in (ref, fused)]
    for step in range(3):
        x, y = batch(seed=10 + step)
        for net, opt in zip((ref, fused), opts, strict=True):
            opt.zero_grad(set_to_none=True)
            net.loss(x, y).backward()
            torch.nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
            opt.step()
    assert_same_state(ref, fused, rel=1e-4)
    nbt = [v for k, v in fused.state_dict().items() if k.endswith("num_batches_tracked")]
    assert nbt and all(int(v) == 3 for v in nbt[1:])  # every BN of a cell saw 3 batches (index 0: stem)
    x, _ = batch(seed=20)
    ref.eval()
    fused.eval()
    assert_rel_close(fused(x), ref(x), 1e-4, "eval logits after training")


def test_state_dict_keys_shapes_and_cross_loading():
    ref, fused = pair(decided=True)
    sd_ref, sd = ref.state_dict(), fused.state_dict()
    assert list(sd_ref) == list(sd)
    assert all(sd_ref[k].shape == sd[k].shape for k in sd)
    x, _ = batch()
    ref.eval()
    fused.eval()
    # a fused checkpoint into a per-edge net and back: same outputs, decisions restored
    other = SuperNet(4, 3, 3, 4, fused=False)
    other.load_state_dict(fused.state_dict())
    other.eval()
    assert other.edge_ops("normal") == tuple(DECIDED_NORMAL)
    assert_rel_close(other(x), fused(x), 1e-4, "per_edge loaded from fused")
    back = SuperNet(4, 3, 3, 4, fused=True)
    back.load_state_dict(other.state_dict())
    back.eval()
    assert_rel_close(back(x), ref(x), 1e-4, "fused loaded from per_edge")


def _explicit_weights(net: SuperNet) -> tuple[torch.Tensor, torch.Tensor]:
    # softmax rows for undecided edges, one-hot rows for decided ones, zero rows for pruned ones
    out = []
    for w, cell_type in zip(net.alpha_softmax(), ("normal", "reduce"), strict=True):
        rows = []
        for e, code in enumerate(net.edge_ops(cell_type)):
            if code == UNDECIDED:
                rows.append(w[e])
            else:
                rows.append(torch.zeros(len(PRIMITIVES)) if code == NONE_INDEX
                            else torch.nn.functional.one_hot(torch.tensor(code), len(PRIMITIVES)).float())
        out.append(torch.stack(rows))
    return out[0], out[1]


@pytest.mark.parametrize("fused_engine", [False, True], ids=["per_edge", "fused"])
def test_op_weights_path_equals_branching_path(fused_engine):
    ref, fused = pair(decided=True)
    net = fused if fused_engine else ref
    net.eval()  # train mode would update different BN modules (every op runs on every edge)
    x, _ = batch()
    ow = _explicit_weights(net)
    assert_rel_close(net(x, op_weights=ow), net(x), 1e-5, "op_weights vs decisions")
    # and both engines agree on the op_weights path, gradients included, in training mode
    ref.train()
    fused.train()
    w = [torch.softmax(torch.randn(num_edges(4), len(PRIMITIVES)), -1).requires_grad_() for _ in range(2)]
    ga = torch.autograd.grad(ref(x, op_weights=tuple(w)).square().sum(), w)
    gb = torch.autograd.grad(fused(x, op_weights=tuple(w)).square().sum(), w)
    for a, b in zip(ga, gb, strict=True):
        assert_rel_close(b, a, 1e-4, "op_weights gradient")


@pytest.mark.parametrize("fused_engine", [False, True], ids=["per_edge", "fused"])
def test_forward_is_vmap_compatible_with_per_seed_buffers(fused_engine):
    nets = pair(nodes=2)
    net = nets[fused_engine]
    x, _ = batch(n=2, hw=8)
    seeds = 3
    ws = [torch.softmax(torch.randn(seeds, num_edges(2), len(PRIMITIVES)), -1) for _ in range(2)]
    params = dict(net.named_parameters())
    buffers = {k: torch.stack([v] * seeds) for k, v in net.named_buffers()}
    out = vmap(lambda wn, wr, b: functional_call(net, {**params, **b}, (x,), {"op_weights": (wn, wr)}))(
        ws[0], ws[1], buffers)
    for i in range(seeds):
        own = {k: v.clone() for k, v in net.named_buffers()}
        ref = functional_call(net, {**params, **own}, (x,), {"op_weights": (ws[0][i], ws[1][i])})
        assert_rel_close(out[i], ref, 1e-5, f"seed {i}")
        for k, v in own.items():
            assert_rel_close(buffers[k][i], v, 1e-5, k)


@pytest.mark.parametrize(("method", "seeds", "limit"), [("darts", 1, 6_100), ("darts2", 1, 13_000),
                                                     ("pcdarts", 1, 7_300), ("pcdarts", 5, 8_000)])
def test_engine_iteration_on_paper_supernet_dispatches_at_most(method, seeds, limit):
    """The paper supernet (8 cells, 16 channels): one engine iteration's aten ops (issue 18's numbers)."""
    from unrealnas.benchmarks.search import build_engine_bench

    cfg = compose_config(["preset=paper", "device=cpu", "search.resolution=8"])  # ops do not depend on the side
    b = build_engine_bench(cfg, method, seeds, torch.device("cpu"), 2)
    assert (len(b.engine.net.cells), b.engine.net.C) == (8, 16)
    b.step()  # lazy state (plans, index tensors, momentum buffers)
    counter = count_ops(b.step)
    assert counter.total <= limit, counter.counts.most_common(20)


def test_five_packed_seeds_dispatch_at_most_1_15x_one():
    from unrealnas.benchmarks.search import build_engine_bench

    cfg = compose_config(["preset=paper", "device=cpu", "search.resolution=8"])
    totals = []
    for seeds in (1, 5):
        b = build_engine_bench(cfg, "darts", seeds, torch.device("cpu"), 2)
        b.step()
        totals.append(count_ops(b.step).total)
    assert totals[1] <= 1.15 * totals[0], totals


def test_config_key_selects_the_engine_and_keeps_the_run_id():
    from unrealnas.errors import ConfigError
    from unrealnas.search.state import search_run_id

    assert compose_config([]).search.supernet == "fused"
    with pytest.raises(ConfigError, match="search.supernet=.fast. is invalid: choose one of fused, per_edge"):
        compose_config(["search.supernet=fast"])
    # the engine is not part of the search's identity: old run directories resume with either
    assert search_run_id(compose_config(["search.supernet=per_edge"])) == search_run_id(compose_config([]))


def test_channels_last_matches_per_edge():
    ref, fused = pair(decided=True)
    x, y = batch()
    x = x.contiguous(memory_format=torch.channels_last)
    for net in (ref, fused):
        net.to(memory_format=torch.channels_last)
        net.loss(x, y).backward()
    assert_rel_close(fused(x), ref(x), 1e-4, "channels_last logits")
    assert_same_grads(ref, fused)
