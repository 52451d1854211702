"""``unrealnas <verb> --help``: usage, the verb's config groups and choices, its keys with the schema's comments."""

from __future__ import annotations

import pytest

from unrealnas.cli import main as cli
from unrealnas.cli.help import field_comments, schema_keys
from unrealnas.config import schema


def test_comments_come_from_the_schema_source():
    comments = field_comments(schema)
    assert comments["SearchConfig"]["lr"] == "SGD learning rate of the weights, cosine-annealed"
    assert comments["FractalConfig"]["max_maps"] == ""  # a field without a comment has none
    keys = {k: (d, c) for k, d, c in schema_keys(schema.Config)}
    assert keys["data.fractal.filling_rate"] == (0.2, "accept a system when lit pixels / all pixels >= this")
    assert keys["experiment.seeds"][0] == [0, 1, 2, 3, 4]  # the overlay's schema behind Optional


def test_search_help_lists_its_groups_and_keys_only(capsys):
    assert cli.main(["search", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: unrealnas search")
    assert "  search       darts, darts2, pcdarts, random, rlnas, sgas_c1, sgas_c2" in out
    assert "search=rlnas: a single-path supernet on random labels, then an evolution by weight angle" in out
    assert "search.arch_lr" in out and "# Adam learning rate of the alphas" in out
    assert "train.epochs" not in out and "  launcher" not in out


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_every_verb_has_help(capsys, verb):
    assert cli.main([verb, "-h"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: unrealnas {verb}") and cli.VERBS[verb][2] in out
    if verb == "config":
        assert "seed: 0" not in out  # help, not the composed config
