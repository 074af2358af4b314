"""The category policy: which catalog categories a detected label may search."""

from __future__ import annotations

import numpy as np

from search.categories import COCO_TO_CATALOG, label_policy
from search.coco import COCO_CLASSES
from search.types import Box, Instance


def _instance(label: str) -> Instance:
    return Instance(Box(0, 0, 2, 2), label, 0.9, np.ones((2, 2), dtype=bool))


def test_labels_map_to_catalog_categories() -> None:
    policy = label_policy()
    assert policy(_instance("couch")) == {"sofa", "armchair"}
    assert policy(_instance("potted plant")) == {"plant"}
    assert policy(_instance("image")) is None  # the whole-photo fallback searches everything
    assert policy(_instance("clock")) is None


def test_every_mapped_label_is_a_coco_class() -> None:
    assert set(COCO_TO_CATALOG) - {"lamp"} <= set(COCO_CLASSES)
    assert all(COCO_TO_CATALOG.values())


def test_custom_mapping() -> None:
    policy = label_policy({"chair": frozenset({"chair_stool_bench"})})
    assert policy(_instance("chair")) == {"chair_stool_bench"}
    assert policy(_instance("couch")) is None
