"""DARTS search core: supernet shape/state, first- and second-order alpha gradients, the Architect."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from tests.darts_reference import Architect, first_order_alpha_grads, unrolled_alpha_grads
from unrealnas.nas.genotype import UNDECIDED, num_edges
from unrealnas.nas.ops import PRIMITIVES
from unrealnas.nas.supernet import ALPHA_NAMES, SuperNet

torch.set_num_threads(1)


def tiny_net(dtype: torch.dtype = torch.float32, nodes: int = 2, layers: int = 3, seed: int = 0) -> SuperNet:
    torch.manual_seed(seed)
    net = SuperNet(C=4, num_classes=3, layers=layers, nodes=nodes, alpha_init="randn").to(dtype)
    with torch.no_grad():  # alphas far from uniform so that gradients are not degenerate
        for a in net.arch_parameters():
            a.normal_(0, 0.5)
    return net


def batch(n: int = 4, hw: int = 8, dtype: torch.dtype = torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, hw, hw, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def test_supernet_shapes_alphas_and_param_split():
    net = tiny_net(nodes=4, layers=3)
    x, _ = batch()
    assert net(x).shape == (4, 3)
    k = num_edges(4)
    assert net.alpha_normal.shape == net.alpha_reduce.shape == (k, len(PRIMITIVES)) == (14, 8)
    assert [c.reduction for c in net.cells] == [False, True, True]
    ids = {id(p) for p in net.weight_parameters()}
    assert not ids & {id(a) for a in net.arch_parameters()}
    assert len(ids) + 2 == len(list(net.parameters()))


def test_paper_size_supernet_param_count():
    # 8 cells, C=16, CIFAR-10: the DARTS reference search model has 1.93M weights.
    net = SuperNet(16, 10, 8)
    assert sum(p.numel() for p in net.weight_parameters()) == 1_930_618
    assert torch.count_nonzero(net.alpha_normal) == 0  # UnrealNAS: zero-initialised alphas


def test_alphas_and_edge_ops_in_state_dict_round_trip():
    net = tiny_net()
    sd = net.state_dict()
    for name in ALPHA_NAMES:
        assert name in sd
    net.set_edge_ops([4, UNDECIDED, 0, 1, UNDECIDED], [UNDECIDED] * 5)
    sd = net.state_dict()
    other = tiny_net(seed=5)
    assert not torch.equal(other.alpha_normal, net.alpha_normal)
    other.load_state_dict(sd)
    assert torch.equal(other.alpha_normal, net.alpha_normal)
    assert torch.equal(other.alpha_reduce, net.alpha_reduce)
    assert other.edge_ops("normal") == (4, UNDECIDED, 0, 1, UNDECIDED)  # Python mirror re-synced
    x, _ = batch()
    net.eval()
    other.eval()
    torch.testing.assert_close(other(x), net(x))


def test_node_sums_only_kept_edges():
    """A pruned edge contributes nothing (the SGAS reference once re-added the previous edge's output)."""
    net = tiny_net(nodes=2, layers=1)  # a single cell (a reduction cell: 1 // 3 == 0)
    net.eval()  # running statistics, so that separate calls see the same BN
    cell = net.cells[0]
    x, _ = batch()
    s = net.stem(x)
    s0, s1 = cell.preprocess0(s), cell.preprocess1(s)
    w = net.alpha_softmax()[1 if cell.reduction else 0]
    rows = [r.unbind(0) for r in w.unbind(0)]
    # node 0: edges 0, 1 (inputs s0, s1); node 1: edges 2, 3, 4 (s0, s1, node 0).
    codes = [UNDECIDED, 4, 0, UNDECIDED, 0]  # edge 2 pruned, edge 4 pruned
    with torch.no_grad():
        out = cell(s, s, rows, codes)
        n0 = cell.edges[0](s0, rows[0]) + cell.edges[1](s1, fixed_op=4)
        n1 = cell.edges[3](s1, rows[3])  # the only kept edge of node 1
    C = out.shape[1] // 2
    torch.testing.assert_close(out[:, :C], n0)
    torch.testing.assert_close(out[:, C:], n1)


def test_skipping_none_changes_nothing():
    """The none op is never run; the output and the alpha gradient equal the explicit weighted sum."""
    net = tiny_net(dtype=torch.float64, nodes=2, layers=3)
    edge = net.cells[0].edges[2]  # a normal cell (C=4), stride 1
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    alpha = torch.randn(len(PRIMITIVES), dtype=torch.float64, requires_grad=True)
    w = torch.softmax(alpha, 0)
    edge.eval()
    out = edge(x, w.unbind(0))
    ref = sum(wk * op(x) for wk, op in zip(w, edge.ops, strict=True))
    torch.testing.assert_close(out, ref)
    (g1,) = torch.autograd.grad(out.square().sum(), alpha, retain_graph=True)
    (g2,) = torch.autograd.grad(ref.square().sum(), alpha)
    torch.testing.assert_close(g1, g2)


def test_first_order_grads_equal_autograd_of_val_loss():
    net = tiny_net()
    x, y = batch()
    snapshot = {k: v.clone() for k, v in net.state_dict().items()}
    loss, grads = first_order_alpha_grads(net, x, y)
    net.load_state_dict(snapshot)  # same BN state for the second pass
    net.zero_grad()
    ref = net.loss(x, y)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    for g, a in zip(grads, net.arch_parameters(), strict=True):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, a.grad)
    # and no weight gradient was left behind by the first-order path
    net2 = tiny_net()
    first_order_alpha_grads(net2, x, y)
    assert all(p.grad is None for p in net2.weight_parameters())


def exact_unrolled_grads(net: SuperNet, xt, yt, xv, yv, xi, momentum, wd, bufs):
    """d/dalpha L_val(w'(alpha), alpha) by double backward through the virtual SGD step."""
    names, weights = zip(*net.named_weight_parameters(), strict=True)
    alphas = net.arch_parameters()
    g = torch.autograd.grad(net.loss(xt, yt), weights, create_graph=True, allow_unused=True)
    w_new = {}
    for n, w, gi, b in zip(names, weights, g, bufs, strict=True):
        gi = torch.zeros_like(w) if gi is None else gi
        w_new[n] = w - xi * (gi + wd * w + momentum * b)
    w_new.update(zip(ALPHA_NAMES, alphas, strict=True))
    loss = net.criterion(functional_call(net, w_new, (xv,)), yv)
    return torch.autograd.grad(loss, alphas)


def make_smooth(net: nn.Module) -> None:
    """Swap ReLU for softplus and max-pool for avg-pool: a C^2 network, for finite-difference checks.

    With ReLU / max-pool, a central difference that crosses a kink picks up the jump of the
    gradient divided by 2R; on a tiny net such crossings are common (the reference method has
    the same property), so the exactness check is made on a smooth network of the same shape.
    """
    for mod in list(net.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(mod, name, nn.Softplus(beta=4))
            elif isinstance(child, nn.MaxPool2d):
                setattr(mod, name, nn.AvgPool2d(3, child.stride, 1, count_include_pad=False))


def test_second_order_matches_exact_double_backward():
    # float64, train-mode BN everywhere (batch statistics in every pass, so both computations
    # differentiate the same function); only the finite-difference HVP is approximate.
    net = tiny_net(dtype=torch.float64)
    make_smooth(net)
    xt, yt = batch(n=8, hw=16, dtype=torch.float64, seed=1)
    xv, yv = batch(n=8, hw=16, dtype=torch.float64, seed=2)
    xi, momentum, wd = 0.5, 0.9, 3e-4  # a large xi makes the Hessian term matter
    torch.manual_seed(3)
    bufs = [0.1 * torch.randn_like(w) for w in net.weight_parameters()]
    _, approx = unrolled_alpha_grads(net, xt, yt, xv, yv, xi=xi, momentum=momentum, weight_decay=wd,
                                     momentum_buffers=bufs)
    exact = exact_unrolled_grads(net, xt, yt, xv, yv, xi, momentum, wd, bufs)
    _, first = first_order_alpha_grads(net, xv, yv)
    a, e, f = (torch.cat([t.flatten() for t in ts]) for ts in (approx, exact, first))
    rel = (a - e).norm() / e.norm()
    assert rel < 1e-2, float(rel)
    # the Hessian term is not negligible: first order is far from the exact answer
    assert (f - e).norm() / e.norm() > 10 * rel


def test_second_order_does_not_touch_weights_or_bn_stats():
    net = tiny_net()
    xt, yt = batch(seed=1)
    xv, yv = batch(seed=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    unrolled_alpha_grads(net, xt, yt, xv, yv, xi=0.1)
    after = net.state_dict()
    # The train-loss pass at the real weights updates BN statistics as in the reference;
    # weights and alphas must be bit-identical.
    for n, _ in net.named_parameters():
        assert torch.equal(before[n], after[n]), n


@pytest.mark.parametrize("unrolled", [False, True])
def test_architect_step_and_state_round_trip(unrolled):
    net = tiny_net()
    arch = Architect(net, lr=0.1, betas=(0.5, 0.999), weight_decay=1e-3, unrolled=unrolled)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    xt, yt = batch(seed=1)
    xv, yv = batch(seed=2)
    a0 = [a.detach().clone() for a in net.arch_parameters()]
    loss = arch.step(xv, yv, xt, yt, w_opt)
    assert loss.ndim == 0 and not loss.requires_grad
    assert all(not torch.equal(a, b) for a, b in zip(net.arch_parameters(), a0, strict=True))
    # one weight step so the momentum buffers exist, then a second arch step
    w_opt.zero_grad()
    net.loss(xt, yt).backward()
    w_opt.step()
    arch.step(xv, yv, xt, yt, w_opt)
    sd = copy.deepcopy(arch.state_dict())  # optimizer state_dicts reference the live tensors
    assert sd["optimizer"]["state"], "Adam state is in the state_dict"
    net2 = tiny_net(seed=9)
    net2.load_state_dict(net.state_dict())
    arch2 = Architect(net2, lr=0.1, weight_decay=1e-3, unrolled=unrolled)
    arch2.load_state_dict(sd)
    w_opt2 = torch.optim.SGD(net2.weight_parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    w_opt2.load_state_dict(copy.deepcopy(w_opt.state_dict()))
    snapshot = {k: v.clone() for k, v in net.state_dict().items()}
    arch.step(xv, yv, xt, yt, w_opt)
    net2.load_state_dict(snapshot)
    arch2.step(xv, yv, xt, yt, w_opt2)
    for a, b in zip(net.arch_parameters(), net2.arch_parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_architect_keeps_frozen_rows_fixed():
    net = tiny_net()
    arch = Architect(net, lr=0.1, weight_decay=1e-2)
    xv, yv = batch(seed=2)
    arch.step(xv, yv)  # Adam moments become non-zero for every row
    k = num_edges(net.nodes)
    net.set_edge_ops([3] + [UNDECIDED] * (k - 1), [UNDECIDED] * (k - 2) + [0, 0])
    frozen_n = net.alpha_normal[0].detach().clone()
    frozen_r = net.alpha_reduce[-2:].detach().clone()
    free = net.alpha_normal[1].detach().clone()
    for _ in range(3):
        arch.step(xv, yv)
    assert torch.equal(net.alpha_normal[0], frozen_n)
    assert torch.equal(net.alpha_reduce[-2:], frozen_r)
    assert not torch.equal(net.alpha_normal[1], free)


def test_hypergradient_runs_in_fp32_under_autocast():
    net = tiny_net()
    arch = Architect(net, unrolled=True)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=0.9)
    xt, yt = batch(seed=1)
    xv, yv = batch(seed=2)
    ref_loss, ref = arch.alpha_grads(xv, yv, xt, yt, w_opt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = arch.alpha_grads(xv, yv, xt, yt, w_opt)
    assert loss.dtype == torch.float32
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r)


def test_forward_under_bf16_autocast_keeps_bf16():
    net = tiny_net()
    x, _ = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
