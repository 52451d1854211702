"""SGAS: scores, normalisation, decisions, pruning, schedule, state round trip, supernet coupling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.darts_reference import Architect, first_order_alpha_grads
from unrealnas.nas.genotype import UNDECIDED, node_edge_ranges
from unrealnas.nas.ops import PRIMITIVES
from unrealnas.nas.sgas import (
    SGASState,
    apply_to_supernet,
    best_non_none_op,
    edge_importance,
    edge_scores,
    end_of_epoch,
    is_decision_epoch,
    make_decision,
    minmax_normalize,
    non_none_probs,
    record_history,
    selection_certainty,
    selection_stability,
    sgas_genotype,
    total_epochs,
)
from unrealnas.nas.supernet import SuperNet

torch.set_num_threads(1)
OP = {name: k for k, name in enumerate(PRIMITIVES)}
D = torch.float64


def probs(p_none: float, p_tilde: list[float]) -> torch.Tensor:
    """An edge's op distribution from p(none) and the renormalised non-none part."""
    pt = torch.tensor(p_tilde, dtype=D)
    return torch.cat([torch.tensor([p_none], dtype=D), (1 - p_none) * pt / pt.sum()])


UNIFORM7 = [1.0] * 7
PEAK_SEP3 = [0.04, 0.04, 0.04, 0.76, 0.04, 0.04, 0.04]  # sep_conv_3x3 (PRIMITIVES index 4)
PEAK_MAX = [0.76, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04]  # max_pool_3x3


def test_importance_certainty_stability():
    p = torch.stack([probs(0.25, UNIFORM7), probs(0.0, [1, 0, 0, 0, 0, 0, 0]), probs(0.5, PEAK_SEP3)])
    torch.testing.assert_close(edge_importance(p), torch.tensor([0.75, 1.0, 0.5], dtype=D))
    torch.testing.assert_close(non_none_probs(p).sum(-1), torch.ones(3, dtype=D))
    cert = selection_certainty(p)
    assert abs(float(cert[0])) < 1e-12 and abs(float(cert[1]) - 1) < 1e-12  # uniform 0, one-hot 1
    h = -sum(x * math.log(x) for x in PEAK_SEP3)
    assert math.isclose(float(cert[2]), 1 - h / math.log(7), rel_tol=1e-9)
    assert best_non_none_op(probs(0.9, PEAK_SEP3)) == OP["sep_conv_3x3"]

    pt = non_none_probs(p)
    assert torch.equal(selection_stability([], pt), torch.zeros(3, dtype=D))
    torch.testing.assert_close(selection_stability([pt], pt), torch.ones(3, dtype=D))
    one_hot_other = torch.tensor([[0, 1, 0, 0, 0, 0, 0]] * 3, dtype=D)
    # intersection of one-hot(op 1) with p~ is p~[1]; the mean over two history entries halves it
    expected = (pt[:, 1] + 1.0) / 2
    torch.testing.assert_close(selection_stability([one_hot_other, pt], pt), expected)
    # only the last `history_size` entries count
    torch.testing.assert_close(selection_stability([one_hot_other] * 3 + [pt] * 4, pt), torch.ones(3, dtype=D))


def test_minmax_normalize_over_candidates_and_constant():
    v = torch.tensor([5.0, 1.0, 3.0, 100.0], dtype=D)
    mask = torch.tensor([True, True, True, False])
    torch.testing.assert_close(minmax_normalize(v, mask), torch.tensor([1.0, 0.0, 0.5, 0.0], dtype=D))
    torch.testing.assert_close(minmax_normalize(v), (v - 1) / 99)
    assert torch.equal(minmax_normalize(torch.full((4,), 0.3, dtype=D)), torch.zeros(4, dtype=D))
    assert torch.equal(minmax_normalize(v, torch.zeros(4, dtype=torch.bool)), torch.zeros(4, dtype=D))


def scenario() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """14 edges: A (edge 5) is important and certain but unstable, B (edge 9) slightly less but
    stable; every other edge is uniform with p(none) = 0.5 (the low anchor of the normalisation)."""
    p = torch.stack([probs(0.5, UNIFORM7)] * 14)
    p[5] = probs(0.1, PEAK_MAX)
    p[9] = probs(0.2, PEAK_SEP3)
    past = non_none_probs(p).clone()
    past[5] = torch.tensor(PEAK_SEP3, dtype=D)  # A used to prefer another op
    return p, [past] * 4


def test_criteria_1_and_2_pick_different_edges():
    p, history = scenario()
    c1 = edge_scores(p, "c1")
    c2 = edge_scores(p, "c2", history)
    assert int(c1.argmax()) == 5 and math.isclose(float(c1[5]), 1.0)
    assert int(c2.argmax()) == 9 and float(c2[5]) == 0.0
    cert9 = (selection_certainty(p)[9] - selection_certainty(p)[0]) / (
        selection_certainty(p)[5] - selection_certainty(p)[0])
    assert math.isclose(float(c1[9]), 0.75 * float(cert9), rel_tol=1e-9)  # (0.8-0.5)/(0.9-0.5) = 0.75
    assert torch.equal(edge_scores(p, 2, history), c2) and torch.equal(edge_scores(p, 1), c1)  # config ints
    masked = edge_scores(p, "c1", candidates=torch.arange(14) != 5)
    assert masked[5] == -math.inf and int(masked.argmax()) == 9
    with pytest.raises(ValueError):
        edge_scores(p, "c3")


@pytest.mark.parametrize("criterion,edge,op", [("c1", 5, "max_pool_3x3"), ("c2", 9, "sep_conv_3x3")])
def test_make_decision_fixes_best_edge_op_and_grows_batch(criterion, edge, op):
    p, history = scenario()
    state = SGASState(base_batch_size=64, batch_increase=8)
    state.history = {t: [h.tolist() for h in history] for t in ("normal", "reduce")}
    alpha = p.log().float()
    made = make_decision(state, alpha, torch.zeros(14, 8), criterion, epoch=9)
    assert [(d.cell_type, d.edge, d.op) for d in made][0] == ("normal", edge, op)
    assert state.edge_ops["normal"][edge] == OP[op]
    # the reduce cell (uniform alphas, constant scores -> 0) decides its first candidate edge
    assert made[1].cell_type == "reduce" and made[1].edge == 0 and made[1].op == "max_pool_3x3"
    assert state.num_decisions == 1 and state.batch_size == 72


def test_second_decided_edge_prunes_the_rest_of_the_node():
    state = SGASState()
    state.edge_ops["normal"][2] = OP["skip_connect"]  # node 1 = edges 2, 3, 4
    alpha = torch.zeros(14, 8)
    alpha[3, OP["dil_conv_5x5"]] = 3.0  # the clear winner among candidates
    alpha[3, OP["none"]] = -3.0
    made = make_decision(state, alpha, torch.zeros(14, 8), "c1")
    assert made[0].edge == 3 and made[0].op == "dil_conv_5x5" and made[0].pruned == [4]
    assert state.edge_ops["normal"][2:5] == [OP["skip_connect"], OP["dil_conv_5x5"], 0]
    assert 4 not in state.candidates("normal")


def test_schedule():
    assert total_epochs() == 50
    assert total_epochs(decision_freq=7) == 64
    epochs = [e for e in range(total_epochs()) if is_decision_epoch(e)]
    # 8 decisions (2 edges x 4 nodes) at 9..44; at 49 nothing is left to decide (as the reference)
    assert epochs == [9, 14, 19, 24, 29, 34, 39, 44, 49]


def tiny_supernet() -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(C=2, num_classes=3, layers=3, nodes=4, alpha_init="randn")  # normal, reduce, reduce


@pytest.mark.parametrize("criterion", ["c1", "c2"])
def test_full_schedule_decides_every_edge_and_genotype_is_the_decisions(criterion):
    net = tiny_supernet()
    state = SGASState()
    gen = torch.Generator().manual_seed(1)
    for epoch in range(total_epochs()):
        with torch.no_grad():  # stand-in for an epoch of alpha updates (undecided rows only)
            for a, mask in zip(net.arch_parameters(), net.frozen_alpha_masks(), strict=True):
                a.add_(torch.randn(a.shape, generator=gen) * 0.3 * (~mask)[:, None])
        made = end_of_epoch(state, epoch, net, criterion)
        assert bool(made) == (epoch in {9, 14, 19, 24, 29, 34, 39, 44})
        assert len(state.history["normal"]) == min(epoch + 1, 4)
    assert state.is_complete() and state.num_decisions == 8 and state.batch_size == 64 + 8 * 8
    assert net.edge_ops("normal") == tuple(state.edge_ops["normal"])
    g = sgas_genotype(state, torch.randn(14, 8), torch.randn(14, 8))  # alphas no longer matter
    assert g == net.genotype()
    for cell_type, pairs in (("normal", g.normal), ("reduce", g.reduce)):
        ops = state.edge_ops[cell_type]
        for node, edges in enumerate(node_edge_ranges(4)):
            decided = [e for e in edges if ops[e] > 0]
            assert len(decided) == 2
            assert pairs[2 * node: 2 * node + 2] == tuple((PRIMITIVES[ops[e]], e - edges.start) for e in decided)
    decided_edges = [(d.cell_type, d.edge) for d in state.decisions]
    assert len(decided_edges) == 16 and len(set(decided_edges)) == 16


def test_state_dict_round_trip_is_json():
    net = tiny_supernet()
    state = SGASState(base_batch_size=32, batch_increase=4)
    for epoch in range(15):
        end_of_epoch(state, epoch, net, "c2")
    sd = json.loads(json.dumps(state.state_dict()))
    restored = SGASState.from_state_dict(sd)
    assert restored == state
    assert restored.batch_size == 32 + 4 * 2
    other = SGASState()
    other.load_state_dict(sd)
    assert other.state_dict() == state.state_dict()
    # a restored state keeps deciding exactly like the original
    a = [x.detach().clone() for x in net.arch_parameters()]
    assert make_decision(state, *a, "c2", 19) == make_decision(restored, *a, "c2", 19)


def test_decided_and_pruned_rows_get_no_gradient_and_stay_frozen():
    net = tiny_supernet()
    state = SGASState()
    for cell_type in ("normal", "reduce"):
        state.edge_ops[cell_type][0] = OP["sep_conv_3x3"]
        state.edge_ops[cell_type][1] = OP["avg_pool_3x3"]
        state.edge_ops[cell_type][2] = 0
    apply_to_supernet(state, net)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    _, grads = first_order_alpha_grads(net, x, y)
    for g in grads:
        assert torch.count_nonzero(g[:3]) == 0 and torch.count_nonzero(g[3:]) > 0
    arch = Architect(net, lr=0.1, weight_decay=1e-3)
    before = [a[:3].detach().clone() for a in net.arch_parameters()]
    for _ in range(2):
        arch.step(x, y)
    for a, b in zip(net.arch_parameters(), before, strict=True):
        assert torch.equal(a[:3], b)


def test_record_history_keeps_last_entries():
    state = SGASState(history_size=2)
    for k in range(5):
        a = torch.zeros(14, 8)
        a[:, 1] = float(k)
        record_history(state, a, a)
    assert len(state.history["normal"]) == 2
    first = torch.tensor(state.history["normal"][0], dtype=D)
    torch.testing.assert_close(first, non_none_probs(torch.softmax(torch.tensor([[0, 3.0, 0, 0, 0, 0, 0, 0]] * 14,
                                                                                dtype=D), -1)))


def test_undecided_state_has_no_frozen_rows():
    net = tiny_supernet()
    apply_to_supernet(SGASState(), net)
    assert net.edge_ops("normal") == (UNDECIDED,) * 14
    assert not any(m.any() for m in net.frozen_alpha_masks())


def test_normalize_over_all_edges_is_the_reference_and_can_pick_another_edge():
    g = torch.Generator().manual_seed(0)
    undecided = torch.ones(14, dtype=torch.bool)
    undecided[[0, 2, 5]] = False  # two decided edges and a pruned one
    differ = 0
    for _ in range(40):
        p = torch.softmax(1.5 * torch.randn(14, 8, generator=g, dtype=D), dim=-1)
        imp, cert = edge_importance(p), selection_certainty(p)
        # the reference: min-max over all 14 edges, no epsilon, argmax over the undecided ones
        ref = ((imp - imp.min()) / (imp.max() - imp.min())) * ((cert - cert.min()) / (cert.max() - cert.min()))
        ours = edge_scores(p, "c1", candidates=undecided)  # default normalize_over="all"
        assert torch.allclose(ours[undecided], ref[undecided])
        assert int(ours.argmax()) == int(ref.masked_fill(~undecided, -1).argmax())
        only = edge_scores(p, "c1", candidates=undecided, normalize_over="undecided")
        differ += int(ours.argmax()) != int(only.argmax())
    assert differ >= 1  # the two modes are not the same rule
    with pytest.raises(ValueError, match="normalize_over"):
        edge_scores(p, "c1", normalize_over="candidates")


def test_sgas_configs_train_alphas_from_epoch_0_like_the_reference():
    from unrealnas.config import compose_config

    for name in ("sgas_c1", "sgas_c2"):
        s = compose_config([f"search={name}"]).search
        assert (s.warmup_epochs, s.epochs, s.sgas.normalize_over) == (0, 50, "all")
        assert s.warmup_epochs + s.epochs == total_epochs(s.nodes, s.sgas.warmup_dec_epoch, s.sgas.decision_freq)
