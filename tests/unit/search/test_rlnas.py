"""RLNAS on the DARTS space: the angle, the path sampler, the evolution, both phases' resume, bad input."""

import copy
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tests.conftest import smoke_overrides
from unrealnas.atomic import read_jsonl
from unrealnas.config import compose_config
from unrealnas.errors import ConfigError
from unrealnas.nas.genotype import Genotype
from unrealnas.nas.ops import NONE_INDEX
from unrealnas.nas.single_path import (
    AngleTable,
    SinglePathNet,
    angle,
    candidate_genotype,
    cell_paths,
    edge_index,
    num_edges,
    path_multiplicity,
    sample_candidate,
    subnet_vector,
)
from unrealnas.results.collect import architecture_name
from unrealnas.search.evolution import EvolutionSettings, EvolutionState, evolve
from unrealnas.search.rlnas import EVAL_FAULT_ENV, EVOLUTION_FILE
from unrealnas.search.run import run_search
from unrealnas.search.state import FAULT_ENV, search_run_dir

# 3 cells, 2 channels, 8 px, 64 images of RLRD on the digits: 4 steps per epoch
TINY = ["search=rlnas", "data=rlrd", "data.source=digits", "data.num_classes=10", "data.num_images=64",
        "search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8", "search.epochs=2",
        "search.rlnas.population=8", "search.rlnas.parents=3", "search.rlnas.mutations=3",
        "search.rlnas.crossovers=3", "search.rlnas.generations=3"]


def test_angle_of_hand_built_vectors():
    assert angle(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(math.pi / 2)
    assert angle(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(math.pi / 4)
    assert angle(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 6.0, 9.0])) == pytest.approx(0.0, abs=1e-7)
    assert angle(torch.tensor([1.0, -2.0]), torch.tensor([-1.0, 2.0])) == pytest.approx(math.pi)
    # sqrt(3)/2 = cos(30 degrees)
    assert angle(torch.tensor([math.sqrt(3.0), 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(math.pi / 6)


def test_paths_and_edges_follow_the_darts_cell():
    paths = cell_paths(4)
    assert len(paths) == 30 and (0, 2, 3, 4, 5) in paths and (1, 5) in paths and (0, 2) in paths
    assert [edge_index(i, 5) for i in range(5)] == [9, 10, 11, 12, 13] and num_edges(4) == 14
    codes = [1] * 14  # no none edge: every path survives
    assert path_multiplicity(codes, 4)[edge_index(0, 2)] == 8  # 0->2 starts 8 paths (2 then any subset of 3,4,5)
    codes[edge_index(0, 2)] = NONE_INDEX
    assert path_multiplicity(codes, 4)[edge_index(0, 2)] == 0


def _trained_pair(seed=0):
    torch.manual_seed(seed)
    net = SinglePathNet(4, 10, 5)
    init = copy.deepcopy(net)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(net(x, sample_candidate(rng, 4)), y).backward()
        opt.step()
    return init, net, rng


def test_angle_table_equals_the_concatenated_reference_vector():
    init, net, rng = _trained_pair()
    table = AngleTable(init, net)
    for _ in range(5):
        cand = sample_candidate(rng, 4)
        want = angle(subnet_vector(init, cand), subnet_vector(net, cand))
        assert table(cand) == pytest.approx(want, rel=1e-9, abs=1e-12) and want > 0
    assert AngleTable(init, copy.deepcopy(init))(cand) == pytest.approx(0.0, abs=1e-6)  # untrained: no angle


def test_sampler_is_uniform_over_the_space():
    """Every node keeps exactly 2 inputs; the input pairs and the kept ops are uniform (chi-square)."""
    rng = np.random.default_rng(7)
    n = 6000
    pairs = {j: {p: 0 for p in itertools.combinations(range(j + 2), 2)} for j in range(4)}
    ops = np.zeros(8, dtype=int)
    for _ in range(n):
        cand = sample_candidate(rng, 4)
        for cell in (cand[:14], cand[14:]):
            for j in range(4):
                kept = tuple(i for i in range(j + 2) if cell[edge_index(i, j + 2)] != NONE_INDEX)
                assert len(kept) == 2
                pairs[j][kept] += 1
                for i in kept:
                    ops[cell[edge_index(i, j + 2)]] += 1
        Genotype.from_json(candidate_genotype(cand, 4).to_json())  # an ordinary genotype
    assert ops[NONE_INDEX] == 0
    assert chisquare(ops[1:]).pvalue > 1e-3
    for j in range(1, 4):
        assert chisquare(list(pairs[j].values())).pvalue > 1e-3
    # the test can fail: a sampler biased towards the first inputs is rejected
    biased = [c + (i < 3) * 200 for i, c in enumerate(pairs[3].values())]
    assert chisquare(biased).pvalue < 1e-3


def _settings(**kw):
    base = dict(population=10, parents=3, mutations=4, crossovers=4, generations=15)
    return EvolutionSettings(**{**base, **kw})


SPACE = [tuple(range(6))] * 4  # 6^4 = 1296 candidates
TARGET = (4, 1, 5, 2)


def _fitness(c):
    return -sum((a - b) ** 2 for a, b in zip(c, TARGET, strict=True)) - 0.1 * c[0]


def _ops():
    def sample(g):
        return tuple(int(g.integers(6)) for _ in range(4))

    def mutate(c, g):
        return tuple(int(g.integers(6)) if g.random() < 0.25 else v for v in c)

    def crossover(a, b, g):
        return tuple(x if g.random() < 0.5 else y for x, y in zip(a, b, strict=True))
    return sample, mutate, crossover


def test_evolution_finds_the_maximum_of_an_enumerable_space():
    best = max(itertools.product(*SPACE), key=_fitness)
    state = evolve(_settings(), _fitness, *_ops(), rng=np.random.default_rng(0))
    assert state.parents[0] == best == TARGET
    assert len(state.fitness) <= 150 < len(list(itertools.product(*SPACE)))  # far from an enumeration
    assert len(state.history) == 15 and state.history[-1]["best_fitness"] == _fitness(TARGET)
    # every candidate evaluated once
    assert len(set(state.fitness)) == len(state.fitness)


def test_evolution_resumes_from_its_json_to_the_same_answer():
    straight = evolve(_settings(), _fitness, *_ops(), rng=np.random.default_rng(1))
    saved, calls = [], [0]

    def save(st):
        calls[0] += 1
        saved.append(json.dumps(st.to_json()))
        if calls[0] == 12:  # 1 + 2 saves per generation: killed in generation 5
            raise KeyboardInterrupt  # the kill: the last saved JSON is what survives

    with pytest.raises(KeyboardInterrupt):
        evolve(_settings(), _fitness, *_ops(), rng=np.random.default_rng(1), save=save)
    state = EvolutionState.from_json(json.loads(saved[-2]))
    resumed = evolve(_settings(), _fitness, *_ops(), rng=np.random.default_rng(99), state=state)
    assert resumed.to_json() == straight.to_json()


def test_population_smaller_than_parents_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="search.rlnas.population.*parents") as e:
        compose_config(smoke_overrides(tmp_path, "search=rlnas", "search.rlnas.population=5",
                                       "search.rlnas.parents=10"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="population=5 is smaller than search.rlnas.parents=10"):
        _settings(population=5, parents=10, mutations=0, crossovers=0).check()
    with pytest.raises(ConfigError, match="mutations"):
        compose_config(smoke_overrides(tmp_path, "search=rlnas", "search.rlnas.mutations=40"))
    with pytest.raises(ConfigError, match="search=rlnas trains on the dataset's stored labels"):
        compose_config(smoke_overrides(tmp_path, "search=rlnas", "data=digits", "data.label=rotation"))
    for unrolled in ("search.unrolled=true", "+search.unrolled=true"):  # no architecture step to unroll
        with pytest.raises(ConfigError, match="unrolled"):
            compose_config(smoke_overrides(tmp_path, "search=rlnas", unrolled))


def test_rlnas_search_writes_an_ordinary_run_directory(tmp_path):
    run_dir = run_search(compose_config(smoke_overrides(tmp_path, *TINY)))
    result = json.loads((run_dir / "result.json").read_text())
    assert run_dir.name.startswith("rlnas-rlrd-c10-s0-")
    assert result["status"] == "completed" and result["method"] == "rlnas" and result["search_label"] == "random"
    g = Genotype.load(run_dir)
    assert g.to_json() == result["genotype_json"] and len(g.normal) == 8
    state = json.loads((run_dir / EVOLUTION_FILE).read_text())
    assert state["generation"] == 3 and result["metrics"]["angle"] > 0
    assert result["metrics"]["angle"] == max(v for _, v in state["fitness"])
    # the smoke preset's warm-up epoch counts as a supernet epoch: warmup_epochs + epochs, as every search
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["epoch"], r["phase"]) for r in rows] == [(0, "supernet"), (1, "supernet"), (2, "supernet"),
                                                       (3, "evolution")]
    assert rows[-1]["evaluated"] == result["metrics"]["evaluated"] and rows[-1]["seconds"] > 0
    assert result["compute_s"] == pytest.approx(sum(r["seconds"] for r in rows))  # the evolution is search cost
    assert architecture_name(("rlnas", "rlrd", "random", 10)) == "RLNAS-RLRD (10 random classes)"


@pytest.mark.parametrize("env", [{FAULT_ENV: "6"}, {EVAL_FAULT_ENV: "11"}], ids=["supernet", "evolution"])
def test_both_phases_resume_after_sigkill_to_the_same_genotype(tmp_path, env):
    straight = run_search(compose_config(smoke_overrides(tmp_path / "a", *TINY)))
    overrides = smoke_overrides(tmp_path / "b", *TINY, "search.checkpoint_every=1")
    cmd = [sys.executable, "-m", "unrealnas", "search", *overrides]
    killed = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = search_run_dir(compose_config(overrides))
    assert not (run_dir / "result.json").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ("resuming the supernet at epoch 1 batch 2" if FAULT_ENV in env
            else "resuming the evolution at generation 1") in resumed.stderr
    a = json.loads((straight / "result.json").read_text())
    b = json.loads((run_dir / "result.json").read_text())
    assert a["genotype_json"] == b["genotype_json"] and a["candidate"] == b["candidate"]
    assert a["metrics"]["angle"] == b["metrics"]["angle"]
    assert (straight / EVOLUTION_FILE).read_bytes() == (run_dir / EVOLUTION_FILE).read_bytes()
