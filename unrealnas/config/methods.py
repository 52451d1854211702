"""The search methods and what each one is: the one table every stage reads.

``search.method`` takes a name of this table. What a stage asks of a method (does it sample its
cell, can its seeds be packed into one network, can its iteration be captured as a CUDA graph, is
it second order, which table row name) is answered here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from unrealnas.errors import ConfigError


@dataclass(frozen=True)
class Method:
    """One search method's facts."""

    name: str
    display: str  # its name in the paper-style tables ("UnrealNAS-<display>-RLGD ...")
    sampled: bool = False  # samples its cell (the random baseline): no iterations, no search data
    second_order: bool = False  # DARTS's unrolled architecture step (finite differences)
    sgas: bool = False  # SGAS: greedy edge decisions by criterion 1 or 2
    partial_channels: bool = False  # PC-DARTS: 1/search.pc_k of each edge's channels + edge-normalisation betas
    single_path: bool = False  # RLNAS: single-path supernet + evolution (search/rlnas.py), not the DARTS engine

    @property
    def packable(self) -> bool:
        """Whether S seeds can run as one seed-stacked network (the engine's methods)."""
        return not self.sampled and not self.single_path

    @property
    def graphable(self) -> bool:
        """Whether ``search.cuda_graph=auto`` captures its iteration (first order only)."""
        return not self.sampled and not self.second_order and not self.single_path


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("darts", "DARTS"),
    Method("darts2", "DARTS (2nd order)", second_order=True),
    Method("sgas_c1", "SGAS (Cri.1)", sgas=True),
    Method("sgas_c2", "SGAS (Cri.2)", sgas=True),
    Method("pcdarts", "PC-DARTS", partial_channels=True),
    Method("rlnas", "RLNAS", single_path=True),
    Method("random", "Random cell", sampled=True),
)}
SEARCH_METHODS = tuple(METHODS)  # the choices of search.method
SAMPLED_METHODS = tuple(n for n, m in METHODS.items() if m.sampled)
ITERATIVE_METHODS = tuple(n for n, m in METHODS.items() if not m.sampled)  # the supernet searches
RANDOM_METHOD = "random"  # the baseline the tables compare against


def method(name: str) -> Method:
    """The facts of search method ``name``; an unknown one raises ConfigError listing the choices."""
    found = METHODS.get(str(name))
    if found is None:
        raise ConfigError(f"search.method={name!r}: choose one of {', '.join(SEARCH_METHODS)}")
    return found
