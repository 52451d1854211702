"""The DARTS search space: op registry, genotypes, the (seed-stackable) supernet, SGAS decisions.

``ops`` and ``genotype`` are light (no supernet); import the heavier modules explicitly:
``from unrealnas.nas.supernet import SuperNet``, ``from unrealnas.nas.sgas import SGASState``.
The search step itself is ``unrealnas.search.engine``.
"""

from unrealnas.nas.genotype import (
    KNOWN_GENOTYPES,
    Genotype,
    count_skips,
    derive_genotype,
    get_known_genotype,
)
from unrealnas.nas.ops import OPS, PRIMITIVES, get_op, register_op

__all__ = [
    "KNOWN_GENOTYPES",
    "OPS",
    "PRIMITIVES",
    "Genotype",
    "count_skips",
    "derive_genotype",
    "get_known_genotype",
    "get_op",
    "register_op",
]
