"""Networks from a genotype: the published parameter count, shapes, drop path, FLOPs, describe CLI."""

from __future__ import annotations

import json

import pytest
import torch

from unrealnas.cli.main import main
from unrealnas.models import build_network, count_macs, count_params, count_params_m, drop_path
from unrealnas.nas.genotype import KNOWN_GENOTYPES

V2 = KNOWN_GENOTYPES["DARTS_V2"]


def test_darts_v2_cifar_params_match_paper():
    # DARTS (Liu et al. 2019) reports 3.3M for DARTS-V2 at 20 cells / 36 channels, aux head excluded.
    model = build_network("cifar", V2, 36, 10, 20, auxiliary=True)
    assert abs(count_params_m(model) - 3.3) < 0.1
    assert count_params(model, exclude_auxiliary=False) > count_params(model)


def test_darts_v2_imagenet_params_match_paper():
    model = build_network("imagenet", V2, 48, 1000, 14)
    assert abs(count_params_m(model) - 4.7) < 0.1


@pytest.mark.parametrize("kind", ["cifar", "imagenet"])
@pytest.mark.parametrize("side", [16, 17])
def test_forward_shapes_train_and_eval(kind, side):
    model = build_network(kind, KNOWN_GENOTYPES["DARTS_V1"], 4, 7, 5)
    model.drop_path_prob = 0.3
    model.train()
    logits, aux = model(torch.randn(2, 3, side, side))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    model.eval()
    assert model(torch.randn(2, 3, side, side)).shape == (2, 7)


def test_no_auxiliary_head_when_disabled():
    model = build_network("cifar", V2, 4, 3, 3, auxiliary=False)
    assert model.auxiliary_head is None
    assert model.train()(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_reductions_at_one_and_two_thirds():
    model = build_network("cifar", V2, 4, 3, 9)
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [3, 6]


def test_drop_path_keeps_expectation_and_zeroes_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.25)
    per_sample = y.flatten(1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1))
    assert abs(float(y.mean()) - 1.0) < 0.05
    assert drop_path(x, 0.0) is x


def test_macs_of_one_conv_and_linear():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 4 * 4, 5))
    assert count_macs(net, (3, 4, 4)) == 4 * 4 * 8 * 3 * 9 + 128 * 5


def test_describe_json_and_text(capsys, tmp_path):
    path = tmp_path / "genotype.json"
    V2.save(path)
    assert main(["describe", f"genotype={path}", "train.layers=5", "train.init_channels=8", "format=json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= {"params_m", "flops_m"} and info["params_m"] > 0 and info["flops_m"] > 0
    assert main(["describe", "genotype=DARTS_V2", "train.layers=5", "train.init_channels=8"]) == 0
    out = capsys.readouterr().out
    assert "params:" in out and "FLOPs:" in out


def test_describe_bad_genotype_is_one_line(capsys, tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text('{"normal": [["conv_7x7", 0]]}')
    assert main(["describe", f"genotype={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert main(["describe", f"genotype={tmp_path / 'missing.json'}"]) == 2
    assert main(["describe"]) == 2
    assert "genotype=" in capsys.readouterr().err
