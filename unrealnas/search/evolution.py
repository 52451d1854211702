"""The evolutionary search of RLNAS (and SPOS before it), over any space of integer tuples.

Generation g evaluates its population (candidates never seen before), keeps the ``parents`` best
seen so far, then builds the next population from ``mutations`` mutants and ``crossovers``
children of those parents plus random candidates up to ``population``; after ``generations``
generations the best candidate seen wins. A candidate is evaluated once (a visited table), so a
search never spends fitness on a repeat. The whole state (generation, population, fitness of
every visited candidate, parents, the numpy generator's state) is plain JSON, written after each
population's evaluation and each generation: a killed search resumes to the same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unrealnas.errors import ConfigError

Cand = tuple[int, ...]
TRIES_PER_CANDIDATE = 10  # RLNAS: mutation and crossover give up after 10 x the wanted count of draws


@dataclass
class EvolutionSettings:
    """The numbers of one evolutionary search (RLNAS DARTS space: 50, 10, 25, 25, 20)."""

    population: int
    parents: int
    mutations: int
    crossovers: int
    generations: int

    def check(self, prefix: str = "search.rlnas") -> None:
        """ConfigError (one line) unless the numbers make a search."""
        if self.parents < 1 or self.population < self.parents:
            raise ConfigError(f"config: {prefix}.population={self.population} is smaller than {prefix}.parents="
                              f"{self.parents}: use a population of at least the parents it keeps (RLNAS: 50 and 10)")
        if self.mutations < 0 or self.crossovers < 0 or self.mutations + self.crossovers > self.population:
            raise ConfigError(f"config: {prefix}.mutations + crossovers = {self.mutations + self.crossovers} "
                              f"exceeds {prefix}.population={self.population}: lower them (RLNAS: 25 + 25 of 50)")
        if self.generations < 1:
            raise ConfigError(f"config: {prefix}.generations={self.generations}: use at least 1 (RLNAS: 20)")


@dataclass
class EvolutionState:
    """Where a search stands; JSON round-trip with :meth:`to_json` / :meth:`from_json`."""

    generation: int = 0
    population: list[Cand] = field(default_factory=list)
    fitness: dict[Cand, float] = field(default_factory=dict)  # every candidate evaluated so far
    parents: list[Cand] = field(default_factory=list)  # the best seen, best first
    rng: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished generation

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (tuples as lists, fitness as [candidate, value] pairs in visiting order)."""
        return {"generation": self.generation, "population": [list(c) for c in self.population],
                "fitness": [[list(c), v] for c, v in self.fitness.items()],
                "parents": [list(c) for c in self.parents], "rng": self.rng, "history": self.history}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EvolutionState:
        """The state :meth:`to_json` wrote."""
        return cls(int(obj["generation"]), [tuple(c) for c in obj["population"]],
                   {tuple(c): float(v) for c, v in obj["fitness"]}, [tuple(c) for c in obj["parents"]],
                   dict(obj["rng"]), list(obj["history"]))


def _fresh(draw: Callable[[], Cand], want: int, seen: set[Cand], tries: int) -> list[Cand]:
    """Up to ``want`` new candidates from ``draw`` (never seen, no repeats), giving up after ``tries`` draws."""
    out: list[Cand] = []
    while len(out) < want and tries > 0:
        tries -= 1
        c = tuple(int(v) for v in draw())
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def evolve(settings: EvolutionSettings, fitness: Callable[[Cand], float],
           sample: Callable[[np.random.Generator], Cand],
           mutate: Callable[[Cand, np.random.Generator], Cand],
           crossover: Callable[[Cand, Cand, np.random.Generator], Cand],
           rng: np.random.Generator, state: EvolutionState | None = None,
           save: Callable[[EvolutionState], None] | None = None,
           max_random_tries: int = 1000) -> EvolutionState:
    """Run (or continue ``state``) the search; ``save`` is called with the state after every change worth keeping.

    Higher fitness is better (RLNAS: the angle). Ties keep the candidate seen first.
    """
    settings.check()
    save = save or (lambda _s: None)
    if state is None or not state.rng:
        state = EvolutionState()
        seen: set[Cand] = set()
        state.population = _fresh(lambda: sample(rng), settings.population, seen,
                                  settings.population * max_random_tries)
        state.rng = rng.bit_generator.state
        save(state)
    else:
        rng.bit_generator.state = state.rng
    while state.generation < settings.generations:
        # Evaluation, saved once per population: with RLNAS's angle table a population costs milliseconds,
        # a write (fsync) per candidate would cost more than the search.
        fresh = [c for c in state.population if c not in state.fitness]
        for c in fresh:
            state.fitness[c] = float(fitness(c))
        if fresh:
            save(state)
        ranked = sorted(dict.fromkeys(state.parents + state.population), key=lambda c: -state.fitness[c])
        state.parents = ranked[:settings.parents]
        seen = set(state.fitness) | set(state.population)

        def pick() -> Cand:
            return state.parents[int(rng.integers(len(state.parents)))]

        mutants = _fresh(lambda: mutate(pick(), rng), settings.mutations, seen,
                         TRIES_PER_CANDIDATE * settings.mutations)
        children = _fresh(lambda: crossover(pick(), pick(), rng), settings.crossovers, seen,
                          TRIES_PER_CANDIDATE * settings.crossovers)
        rest = settings.population - len(mutants) - len(children)
        randoms = _fresh(lambda: sample(rng), rest, seen, rest * max_random_tries)
        best = state.parents[0]
        state.history.append({"generation": state.generation, "best": list(best), "best_fitness": state.fitness[best],
                              "evaluated": len(state.fitness), "mutants": len(mutants), "children": len(children),
                              "random": len(randoms)})
        state.population = mutants + children + randoms
        state.generation += 1
        state.rng = rng.bit_generator.state
        save(state)
    return state
