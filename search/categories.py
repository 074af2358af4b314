"""Category-aware search: which catalog categories a detected object may be.

A detected couch searches sofas and armchairs, not every product that happens to look
alike. Measured on the 105 IKEA dev rooms (docs/QUALITY.md): furniture budget-20 recall
0.143 -> 0.188 with this policy; sofas 0.17 -> 0.33, chairs 0.27 -> 0.41.
Labels with no entry (and the whole-photo fallback) search every category.
"""

from __future__ import annotations

from collections.abc import Mapping

from search.service import CategoryPolicy
from search.types import Instance

# Detected label -> catalog categories of the IKEA-style feed (sofa, armchair, chair_stool_bench,
# table, bed, lamp, plant, storage, rug, mirror, other).
COCO_TO_CATALOG: Mapping[str, frozenset[str]] = {
    "couch": frozenset({"sofa", "armchair"}),
    "chair": frozenset({"chair_stool_bench", "armchair"}),
    "bench": frozenset({"chair_stool_bench", "sofa"}),
    "bed": frozenset({"bed", "sofa"}),
    "dining table": frozenset({"table"}),
    "potted plant": frozenset({"plant"}),
    "vase": frozenset({"other", "plant"}),
    # proposals that are named by catalog category already (search/models/cam.py)
    "lamp": frozenset({"lamp"}),
}


def label_policy(mapping: Mapping[str, frozenset[str]] = COCO_TO_CATALOG) -> CategoryPolicy:
    """A policy that restricts an instance to the categories its label maps to."""

    def policy(instance: Instance) -> frozenset[str] | None:
        return mapping.get(instance.label)

    return policy
