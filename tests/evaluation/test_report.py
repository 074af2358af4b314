"""The eval report with the close-up check: its table, Markdown section and JSON."""

from __future__ import annotations

import json

from search.evaluation.closeups import CloseupMetrics
from search.evaluation.metrics import PhotoOutcome, RankedInstance, evaluate
from search.evaluation.report import closeup_table, to_json, to_markdown


def test_the_report_carries_the_closeup_check() -> None:
    photo = PhotoOutcome({"S": "sofa"}, (RankedInstance("couch", (("S", 0.9),)),))
    metrics = {"roomlens": evaluate([photo], groups=["furniture", "all", "sofa"])}
    closeups = {
        "roomlens": CloseupMetrics(crops=4, recall_at={1: 0.25, 10: 0.5}, groups_per_crop=2.5),
        "whole photo": CloseupMetrics(crops=4, recall_at={1: 0.0, 10: 0.25}, groups_per_crop=1),
    }
    lines = closeup_table(closeups).splitlines()
    assert lines[0].split() == ["close-ups:", "method", "crops", "R@1", "R@10", "groups/crop"]
    assert lines[2].split() == ["roomlens", "4", "0.250", "0.500", "2.5"]
    markdown = to_markdown(metrics, {"photos": 1}, closeups)
    assert "## Close-ups" in markdown and "| whole photo | 4 | 0.000 | 0.250 | 1.0 |" in markdown
    assert "## Close-ups" not in to_markdown(metrics, {"photos": 1})
    body = json.loads(to_json(metrics, {"photos": 1}, closeups))
    assert body["closeups"]["roomlens"]["recall_at"] == {"1": 0.25, "10": 0.5}
    assert "closeups" not in json.loads(to_json(metrics, {"photos": 1}))
