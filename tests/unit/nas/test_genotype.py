"""Genotypes: derivation from alphas, genotype.json round trip and validation, known cells, drawing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unrealnas.errors import ConfigError
from unrealnas.nas.draw import draw_genotype
from unrealnas.nas.genotype import (
    KNOWN_GENOTYPES,
    UNDECIDED,
    Genotype,
    count_skips,
    derive_genotype,
    get_known_genotype,
    node_edge_ranges,
)
from unrealnas.nas.ops import PRIMITIVES

OP = {name: k for k, name in enumerate(PRIMITIVES)}


def hand_made_alpha() -> torch.Tensor:
    """Alphas (14 x 8) whose derived cell is known by hand (see the expected genotype below)."""
    a = torch.zeros(14, 8)
    # node 0 (edges 0, 1): both kept; ops by the largest logit.
    a[0, OP["sep_conv_5x5"]] = 2.0
    a[1, OP["avg_pool_3x3"]] = 1.0
    # node 1 (edges 2, 3, 4): edge 2 has `none` as its strongest op (5 vs 4), yet its best
    # non-none weight e^4 / (e^5 + e^4 + 6) = 0.261 beats edge 4 (0.190); edge 3's skip is 0.280.
    a[2, OP["none"]] = 5.0
    a[2, OP["sep_conv_3x3"]] = 4.0
    a[3, OP["skip_connect"]] = 1.0
    a[4, OP["dil_conv_3x3"]] = 0.5
    # node 2 (edges 5..8): edge 5 dominated by `none` is dropped; 7 and 8 kept.
    a[5, OP["none"]] = 10.0
    a[5, OP["max_pool_3x3"]] = 2.0
    a[6, OP["sep_conv_3x3"]] = 0.2
    a[7, OP["dil_conv_5x5"]] = 3.0
    a[8, OP["max_pool_3x3"]] = 1.5
    # node 3 (edges 9..13): uniform except 13 and 10; ties among ops go to the first.
    a[13, OP["sep_conv_5x5"]] = 0.7
    a[10, OP["avg_pool_3x3"]] = 0.3
    return a


EXPECTED_NORMAL = (
    ("sep_conv_5x5", 0), ("avg_pool_3x3", 1),
    ("skip_connect", 1), ("sep_conv_3x3", 0),
    ("dil_conv_5x5", 2), ("max_pool_3x3", 3),
    ("sep_conv_5x5", 4), ("avg_pool_3x3", 1),
)


def test_hand_made_probabilities_are_as_commented():
    p = torch.softmax(hand_made_alpha(), -1)
    assert math.isclose(float(p[2, OP["sep_conv_3x3"]]), math.exp(4) / (math.exp(5) + math.exp(4) + 6), rel_tol=1e-6)
    assert p[2].argmax() == OP["none"]
    assert p[3, OP["skip_connect"]] > p[2, OP["sep_conv_3x3"]] > p[4, OP["dil_conv_3x3"]]


def test_derive_genotype_on_hand_made_alphas():
    g = derive_genotype(hand_made_alpha(), torch.zeros(14, 8))
    assert g.normal == EXPECTED_NORMAL
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    # uniform alphas: the first two inputs and the first non-none op (max_pool), as the reference
    assert g.reduce == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4


def test_derive_with_importance_rank_differs_when_none_dominates():
    # By 1 - p(none), edge 2 (p(none) = 0.70) loses to edge 4 (0.19 none); by max op it wins.
    g = derive_genotype(hand_made_alpha(), torch.zeros(14, 8), edge_rank="importance")
    node1 = g.normal[2:4]
    assert {i for _, i in node1} == {1, 2}


def test_derive_with_sgas_decisions():
    fixed_n = [UNDECIDED] * 14
    fixed_n[4] = OP["sep_conv_5x5"]  # decided: node 1 input 2 (node 0)
    fixed_n[2] = 0  # pruned: node 1 input 0 can never be chosen
    fixed_r = [UNDECIDED] * 14
    g = derive_genotype(hand_made_alpha(), torch.zeros(14, 8), fixed=(fixed_n, fixed_r))
    assert g.normal[2:4] == (("skip_connect", 1), ("sep_conv_5x5", 2))
    assert g.normal[:2] == (("sep_conv_5x5", 0), ("avg_pool_3x3", 1))
    # all decided: the genotype is the decisions, whatever the alphas say
    full = [UNDECIDED] * 14
    for edges in node_edge_ranges(4):
        full[edges[0]] = OP["dil_conv_3x3"]
        full[edges[-1]] = OP["skip_connect"]
        for e in edges[1:-1]:
            full[e] = 0
    g = derive_genotype(torch.randn(14, 8), torch.randn(14, 8), fixed=(full, full))
    assert g.normal == g.reduce == (("dil_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 0),
                                    ("skip_connect", 2), ("dil_conv_3x3", 0), ("skip_connect", 3),
                                    ("dil_conv_3x3", 0), ("skip_connect", 4))


def test_json_round_trip_file_and_run_dir(tmp_path):
    g = KNOWN_GENOTYPES["DARTS_V2"]
    path = g.save(tmp_path / "genotype.json")
    obj = json.loads(path.read_text())
    assert obj == {
        "normal": [list(p) for p in g.normal], "normal_concat": [2, 3, 4, 5],
        "reduce": [list(p) for p in g.reduce], "reduce_concat": [2, 3, 4, 5],
    }
    assert Genotype.load(path) == g
    assert Genotype.load(tmp_path) == g  # a run directory
    assert Genotype.from_json(g.to_json()) == g
    assert hash(Genotype.from_json(obj)) == hash(g)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def _valid() -> dict:
    return KNOWN_GENOTYPES["DARTS_V1"].to_json()


@pytest.mark.parametrize("mutate,needle", [
    (lambda o: o["normal"].__setitem__(0, ["conv_7x7", 0]), "unknown op 'conv_7x7'"),
    (lambda o: o["normal"].__setitem__(0, ["none", 0]), "unknown op 'none'"),
    (lambda o: o["reduce"].__setitem__(1, ["skip_connect", 2]), "input 2 of node 0"),
    (lambda o: o["reduce"].__setitem__(7, ["skip_connect", -1]), "input -1 of node 3"),
    (lambda o: o["normal"].__setitem__(3, ["skip_connect", True]), "input True"),
    (lambda o: o["normal"].pop(), "two per node"),
    (lambda o: o.__setitem__("reduce", o["reduce"][:6]), "same number of pairs"),
    (lambda o: o.pop("reduce_concat"), "missing key(s) reduce_concat"),
    (lambda o: o.__setitem__("normal_concat", [2, 3, 9]), "index 9"),
    (lambda o: o.__setitem__("normal_concat", [2, 2]), "repeated"),
    (lambda o: o.__setitem__("extra", 1), "unknown key(s) extra"),
    (lambda o: o["normal"].__setitem__(0, "sep_conv_3x3"), "pair"),
])
def test_malformed_genotype_files_are_rejected(tmp_path, mutate, needle):
    obj = _valid()
    mutate(obj)
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(ConfigError) as e:
        Genotype.load(path)
    msg = str(e.value)
    assert str(path) in msg and needle in msg and "\n" not in msg


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "genotype.json"
    bad.write_text("Genotype(normal=[('sep_conv_3x3', 0)])")  # Python source is never evaluated
    with pytest.raises(ConfigError, match="not valid JSON"):
        Genotype.load(bad)
    with pytest.raises(ConfigError, match="no such genotype file"):
        Genotype.load(tmp_path / "missing")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        Genotype.from_json([1, 2], source="x")


def test_known_genotypes_and_skip_counts():
    assert count_skips(KNOWN_GENOTYPES["DARTS_V1"]) == (3, 3)
    assert count_skips(KNOWN_GENOTYPES["DARTS_V2"]) == (2, 3)
    assert get_known_genotype("DARTS") is KNOWN_GENOTYPES["DARTS_V2"]
    with pytest.raises(ConfigError, match="DARTS_V1"):
        get_known_genotype("NASNet")
    for g in KNOWN_GENOTYPES.values():
        assert g.nodes == 4 and Genotype.from_json(g.to_json()) == g


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError):
        Genotype((("skip_connect", 3),) * 8, (2, 3, 4, 5), (("skip_connect", 0),) * 8, (2, 3, 4, 5))


def test_draw_genotype_writes_png_and_pdf(tmp_path):
    g = KNOWN_GENOTYPES["DARTS_V2"]
    png = draw_genotype(g, tmp_path / "cell.png", title="DARTS_V2")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    pdf = draw_genotype(g, tmp_path / "cell.pdf")
    assert pdf.read_bytes()[:4] == b"%PDF"
