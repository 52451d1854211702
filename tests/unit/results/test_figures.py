"""Figures for a paper: labelled axes with units, one legend per panel, seeds told apart, offsets, graphviz cells."""

from __future__ import annotations

import pytest

from tests.unit.results.test_results import _figure_runs
from unrealnas.nas import draw
from unrealnas.nas.genotype import KNOWN_GENOTYPES
from unrealnas.results import figures
from unrealnas.results.collect import collect_results


@pytest.fixture
def drawn(tmp_path, monkeypatch):
    """Every results figure of a hand-made runs folder, captured as matplotlib Figures by stem name."""
    captured = {}
    real = figures.save_figure

    def capture(fig, stem, formats=figures.FORMATS):
        captured[stem.name] = fig
        return real(fig, stem, formats)

    monkeypatch.setattr(figures, "save_figure", capture)
    runs = _figure_runs(tmp_path)
    report = figures.plot_all(runs, tmp_path / "fig", collection=collect_results(runs))
    assert {p.suffix for p in report.files} == {".png", ".pdf"}  # PDF beside every PNG
    return captured


def test_every_axis_has_a_label_with_its_unit_and_every_panel_a_legend(drawn):
    assert set(drawn) == {"fig5_skip_connections", "fig6_accuracy_vs_classes", "fig1_learning_curves"}
    for name, fig in drawn.items():
        for ax in fig.axes:
            for label in (ax.get_xlabel(), ax.get_ylabel()):
                assert "(" in label and ")" in label, f"{name}: {label!r} names no unit"
            assert ax.get_legend() is not None, f"{name}: panel {ax.get_title()!r} has no legend"


def test_seeds_are_told_apart_by_marker(drawn):
    for name in ("fig1_learning_curves", "fig5_skip_connections"):
        ax = drawn[name].axes[0]
        markers = {line.get_marker() for line in ax.get_lines() if line.get_marker() not in ("None", None, "")}
        assert {figures.seed_marker(0), figures.seed_marker(1)} <= markers, name


def test_overlapping_series_are_offset(drawn):
    # Fig. 6: two series at 10 classes must not share an x position; Fig. 5: equal counts, distinct y.
    ax6 = drawn["fig6_accuracy_vs_classes"].axes[0]
    firsts = [float(c.lines[0].get_xdata()[0]) for c in ax6.containers]  # one errorbar container per series
    assert len(firsts) == 2 and len({round(x, 4) for x in firsts}) == 2 and all(9 < x < 11 for x in firsts)
    ax5 = drawn["fig5_skip_connections"].axes[0]
    means = [line for line in ax5.get_lines() if line.get_linewidth() == 2]
    assert len({round(float(line.get_ydata()[0]), 3) for line in means}) == len(means) == 3


def test_cells_are_drawn_by_graphviz_with_every_operation(tmp_path):
    g = KNOWN_GENOTYPES["DARTS_V2"]
    source = draw.cell_graph(g, "DARTS_V2").source
    assert "cluster_normal" in source and "cluster_reduce" in source and "rankdir=LR" in source
    assert source.count("label=sep_conv_3x3") == sum(op == "sep_conv_3x3" for op, _ in g.normal + g.reduce)
    png = draw.draw_genotype(g, tmp_path / "cell.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert draw.draw_genotype(g, tmp_path / "cell.pdf").read_bytes()[:4] == b"%PDF"


def test_without_the_dot_program_the_cells_are_still_drawn(tmp_path, monkeypatch):
    import graphviz

    def missing(*args, **kwargs):
        raise graphviz.ExecutableNotFound(["dot"])

    monkeypatch.setattr(graphviz.Digraph, "pipe", missing)
    png = draw.draw_genotype(KNOWN_GENOTYPES["DARTS_V2"], tmp_path / "cell.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000  # the matplotlib drawing


def test_one_class_count_draws_no_fig6_and_says_why(tmp_path):
    from tests.unit.results.test_results import _train

    runs = tmp_path / "runs"
    for seed in (0, 1):
        _train(runs, f"rlgd-s{seed}", "rlgd", seed, 8.0 + seed, classes=10)
        _train(runs, f"rlrn-s{seed}", "rlrn", seed, 9.0 + seed, classes=10)
    report = figures.plot_all(runs, tmp_path / "fig", formats=["png"], cells=False)
    assert not (tmp_path / "fig" / "fig6_accuracy_vs_classes.png").exists()
    assert any(why.startswith("accuracy vs number of classes (Fig. 6): no random-label search data retrained at "
                              "two or more class counts") for why in report.skipped)
