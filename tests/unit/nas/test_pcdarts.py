"""PC-DARTS in the fused supernet against an oracle written from the paper's equations.

The oracle (below) is a plain per-edge forward of Xu et al. (ICLR 2020), Sec. 3.2-3.3, on the very
modules of a ``SuperNet(partial_channels=K)``: on edge (i, j) the first C/K channels of x_j go
through the mixed op sum_o softmax(alpha_ij)_o * o(x_j[:C/K]) (Eq. 2), the other channels bypass it
(max-pooled 2x2 on a stride-2 edge), the two parts are concatenated and channel-shuffled with K groups,
and node i sums its edges weighted by the softmax of its betas over its incoming edges (Eq. 4).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from unrealnas.nas.genotype import derive_genotype
from unrealnas.nas.ops import PRIMITIVES
from unrealnas.nas.supernet import SuperNet, seed_slice

K = 4
# fp32 tolerances: the fused kernels sum the same terms in another order (stacked convs, one batched
# matmul per group, the shuffle applied to node sums instead of to each edge)
RTOL, ATOL = 1e-4, 1e-5


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel shuffle: view the channels as (groups, C/groups), transpose, flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def oracle_edge(edge, x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    part = x.shape[1] // K
    selected, bypassed = x[:, :part], x[:, part:]  # explicit channel selection S_ij: the first C/K
    mixed = sum(w[o] * op(selected) for o, op in enumerate(edge.ops))  # every op, none included (adds 0)
    if stride == 2:
        bypassed = F.max_pool2d(bypassed, 2, 2)
    return shuffle(torch.cat([mixed, bypassed], 1), K)


def oracle_cell(cell, s0: torch.Tensor, s1: torch.Tensor, w: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    e = 0
    for i in range(cell.nodes):
        b = torch.softmax(beta[e:e + i + 2], dim=0)  # edge normalisation over node i's inputs
        node = sum(b[j] * oracle_edge(cell.edges[e + j], h, w[e + j], 2 if cell.reduction and j < 2 else 1)
                   for j, h in enumerate(states))
        states.append(node)
        e += i + 2
    return torch.cat(states[2:], 1)


def oracle_net(net: SuperNet, x: torch.Tensor) -> torch.Tensor:
    w = {False: torch.softmax(net.alpha_normal, -1), True: torch.softmax(net.alpha_reduce, -1)}
    beta = {False: net.beta_normal, True: net.beta_reduce}
    s0 = s1 = net.stem(x)
    for cell in net.cells:
        s0, s1 = s1, oracle_cell(cell, s0, s1, w[cell.reduction], beta[cell.reduction])
    return net.classifier(net.global_pooling(s1).flatten(1))


def pc_net(seed: int) -> SuperNet:
    torch.manual_seed(seed)
    net = SuperNet(4, 10, 3, alpha_init="randn", partial_channels=K)  # cells of 4, 8, 16 channels: C/K = 1, 2, 4
    with torch.no_grad():  # far from uniform, so that a wrong weighting shows
        for p in net.arch_parameters():
            p.normal_()
    return net


@pytest.mark.parametrize("seeds", [0, 1, 2])  # 0: the plain one-seed net; 1, 2: packed
def test_fused_pc_forward_and_gradients_equal_the_oracle(seeds):
    """Logits, alpha/beta/weight gradients, BN running statistics and eval logits of every (packed) seed
    equal the oracle's on that seed's own network."""
    nets = [pc_net(s) for s in range(max(seeds, 1))]
    oracles = [copy.deepcopy(n) for n in nets]
    net = nets[0] if seeds == 0 else SuperNet.pack(nets)
    S = max(seeds, 1)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(6, S, 3, 8, 8, generator=g), torch.randint(0, 10, (6, S), generator=g)
    logits = net(x.view(6, S * 3, 8, 8))
    if seeds == 0:
        logits = logits.unsqueeze(1)
    loss = F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0)
    names = [n for n, _ in net.named_parameters()]
    assert {"beta_normal", "beta_reduce"} <= set(names)
    grads = torch.autograd.grad(loss.sum(), list(net.parameters()))
    buffers = dict(net.named_buffers())
    for s, ref in enumerate(oracles):
        out = oracle_net(ref, x[:, s])
        torch.testing.assert_close(logits[:, s], out, rtol=RTOL, atol=ATOL)
        params = dict(ref.named_parameters())
        ref_grads = torch.autograd.grad(F.cross_entropy(out, y[:, s]), [params[n] for n in names])
        for name, gr, r in zip(names, grads, ref_grads, strict=True):
            mine = gr.view_as(r) if seeds == 0 else seed_slice(gr, S, s, r.shape)
            assert r.abs().sum() > 0 or name.startswith("cells"), name  # the arch gradients are not vacuous
            torch.testing.assert_close(mine, r, rtol=RTOL, atol=ATOL, msg=name)
        for name, b in ref.named_buffers():
            if b.is_floating_point():
                mine = buffers[name].view_as(b) if seeds == 0 else seed_slice(buffers[name], S, s, b.shape)
                torch.testing.assert_close(mine, b, rtol=RTOL, atol=ATOL, msg=name)
    net.eval()
    with torch.no_grad():
        out = net(x.view(6, S * 3, 8, 8))
    for s, ref in enumerate(oracles):
        ref.eval()
        with torch.no_grad():
            torch.testing.assert_close(out if seeds == 0 else out[:, s], oracle_net(ref, x[:, s]), rtol=RTOL, atol=ATOL)


def test_pc_net_is_not_darts():
    """The oracle can tell: with K = 1 and uniform betas the cell is DARTS's times 1/(edges of the node),
    and K = 4 gives other logits than K = 1 on the same alphas (partial channels change the function)."""
    torch.manual_seed(0)
    a = SuperNet(4, 10, 3, alpha_init="randn", partial_channels=1)
    torch.manual_seed(0)
    b = SuperNet(4, 10, 3, alpha_init="randn", partial_channels=4)
    x = torch.randn(4, 3, 8, 8)
    assert not torch.allclose(a(x), b(x), atol=1e-3)
    assert [p.shape for p in b.cells[0].edges[0].ops[4].parameters()][0][0] == 1  # sep_conv_3x3 on C/K = 1 channel


def test_genotype_ranks_edges_by_op_weight_times_normalised_beta():
    """Node 1 (edges 2, 3, 4 from s0, s1, node 0): by alphas alone edges 2 and 3 win; with betas
    (0, 0, 1) the normalised betas are (0.212, 0.212, 0.576) and the scores p_max * beta rank edge 4
    first, then edge 2 (0.513 * 0.212 = 0.109 > 0.390 * 0.212 = 0.083). The op kept on an edge is its
    argmax either way."""
    sep3, dil5, avg = PRIMITIVES.index("sep_conv_3x3"), PRIMITIVES.index("dil_conv_5x5"), PRIMITIVES.index("avg_pool_3x3")
    alpha = torch.zeros(14, len(PRIMITIVES))
    alpha[2, sep3], alpha[3, dil5], alpha[4, avg] = 2.0, 1.5, 1.0  # p_max = 0.513, 0.390, 0.280
    alpha[0, sep3] = alpha[1, sep3] = 1.0
    for e in range(5, 14):
        alpha[e, sep3] = 1.0
    beta = torch.zeros(14)
    plain = derive_genotype(alpha, alpha, 4)
    assert plain.normal[2:4] == (("sep_conv_3x3", 0), ("dil_conv_5x5", 1))
    uniform = derive_genotype(alpha, alpha, 4, betas=(beta, beta))  # uniform betas: DARTS's choice
    assert uniform == plain
    beta[4] = 1.0
    pc = derive_genotype(alpha, alpha, 4, betas=(beta, beta))
    assert pc.normal[2:4] == (("avg_pool_3x3", 2), ("sep_conv_3x3", 0))
    assert pc.normal[:2] == plain.normal[:2] and pc.normal[4:] == plain.normal[4:]  # other nodes: uniform betas
    with pytest.raises(ValueError, match="betas must have shape"):
        derive_genotype(alpha, alpha, 4, betas=(beta[:5], beta))


def test_supernet_genotype_and_arch_parameters_carry_the_betas():
    net = pc_net(0)
    assert [p.shape for p in net.arch_parameters()] == [(14, 8), (14, 8), (14,), (14,)]
    assert "beta_normal" in net.state_dict() and all(n not in ("beta_normal", "beta_reduce")
                                                     for n, _ in net.named_weight_parameters())
    assert net.genotype() == derive_genotype(net.alpha_normal, net.alpha_reduce, 4,
                                             betas=(net.beta_normal, net.beta_reduce))
    with pytest.raises(ValueError, match="partial-channel groups"):
        SuperNet(6, 10, 3, partial_channels=4)
    with pytest.raises(ValueError, match="fused supernet"):
        SuperNet(4, 10, 3, partial_channels=4, fused=False)


def test_recompute_cell_equals_none_for_pc():
    """search.recompute=cell on the PC cell: same logits and arch gradients as keeping every activation."""
    nets = [pc_net(s) for s in range(2)]
    a, b = SuperNet.pack(copy.deepcopy(nets)), SuperNet.pack(nets)
    b.recompute = "cell"
    x = torch.randn(4, 6, 8, 8)
    ga = torch.autograd.grad(a(x).square().sum(), a.arch_parameters())
    gb = torch.autograd.grad(b(x).square().sum(), b.arch_parameters())
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_channels_last_inputs_give_the_same_pc_logits():
    """CUDA runs the search channels_last (search.channels_last=auto): the partial-channel views and slices
    must not depend on the memory format."""
    nets = [pc_net(s) for s in range(2)]
    a, b = SuperNet.pack(copy.deepcopy(nets)), SuperNet.pack(nets).to(memory_format=torch.channels_last)
    x = torch.randn(4, 6, 8, 8)
    torch.testing.assert_close(b(x.contiguous(memory_format=torch.channels_last)), a(x), rtol=RTOL, atol=ATOL)


def test_engine_iteration_equals_the_oracle_step():
    """One engine iteration of two packed pcdarts seeds (Adam on alphas and betas from the validation batch,
    then clipped SGD on the weights) equals the same step taken with the oracle's gradients and torch's
    optimizers on each seed's own network."""
    from unrealnas.search.engine import SearchEngine, SeedState, StepSettings

    lr, arch_lr, clip = 0.1, 0.05, 5.0  # a large arch lr: the betas move visibly in one step
    nets = [pc_net(s) for s in range(2)]
    oracles = [copy.deepcopy(n) for n in nets]

    def state(n: SuperNet) -> SeedState:
        return SeedState(n, torch.optim.SGD(n.weight_parameters(), lr=lr, momentum=0.9, weight_decay=3e-4),
                         torch.optim.Adam(n.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3))

    engine = SearchEngine([state(n) for n in nets], StepSettings("pcdarts", clip, cuda_graph="off"),
                          torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    train = [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in nets]
    val = [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in nets]
    engine.iteration(*engine.stack(train), *engine.stack(val))
    engine.to_runs()
    for s, ref in enumerate(oracles):
        st = state(ref)
        arch = ref.arch_parameters()
        grads = torch.autograd.grad(F.cross_entropy(oracle_net(ref, val[s][0]), val[s][1]), arch)
        for p, gr in zip(arch, grads, strict=True):
            p.grad = gr
        st.arch_optimizer.step()
        weights = ref.weight_parameters()
        grads = torch.autograd.grad(F.cross_entropy(oracle_net(ref, train[s][0]), train[s][1]), weights)
        for p, gr in zip(weights, grads, strict=True):
            p.grad = gr
        torch.nn.utils.clip_grad_norm_(weights, clip)
        st.optimizer.step()
        mine = dict(nets[s].named_parameters())
        assert (ref.beta_normal - pc_net(s).beta_normal).abs().max() > 1e-3  # the step moved the betas
        for name, p in ref.named_parameters():
            torch.testing.assert_close(mine[name], p, rtol=RTOL, atol=ATOL, msg=name)
