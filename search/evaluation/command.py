"""`roomlens eval`: run, measure and write the report files."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from search.config import Settings
from search.db import make_engine, make_session_factory
from search.evaluation.closeups import CloseupFraming, CloseupMetrics, closeup_recall
from search.evaluation.metrics import BUDGETS, FURNITURE, KS, MethodMetrics, evaluate
from search.evaluation.report import plot, to_json, to_markdown
from search.evaluation.runner import (
    CloseupPass,
    build_closeup_methods,
    build_methods,
    read_queries,
    run_eval,
)
from search.factory import build_service


@dataclass(frozen=True)
class EvalOptions:
    baselines: bool = True
    limit: int | None = None
    progress: bool = True
    closeups: CloseupFraming | None = None  # also the close-up check, framed so


@dataclass(frozen=True)
class EvalRun:
    metrics: dict[str, MethodMetrics]
    meta: dict[str, object]
    files: list[Path]
    closeups: dict[str, CloseupMetrics] = field(default_factory=dict)


def eval_command(
    queries_path: Path, out_dir: Path, *, settings: Settings, options: EvalOptions
) -> EvalRun:
    """Evaluate the configured pipeline (and baselines) on `queries_path`; write reports."""
    queries = read_queries(queries_path)[: options.limit]
    engine = make_engine(settings.database_url)
    try:
        service = build_service(settings, make_session_factory(engine))
        loaded = service.live_index.get()
        methods = build_methods(service, baselines=options.baselines)
        closeup = None
        if options.closeups is not None:
            closeup_methods = build_closeup_methods(service, baselines=options.baselines)
            closeup = CloseupPass(closeup_methods, options.closeups)
        started = time.perf_counter()
        outcomes = run_eval(queries, methods, progress=options.progress, closeup=closeup)
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
    categories = sorted({c for q in queries for c in q.expected.values()})
    groups = ["furniture", "all", *categories]
    metrics = {
        name: evaluate(outs, groups=groups, ks=KS, budgets=BUDGETS)
        for name, outs in outcomes.items()
    }
    meta: dict[str, object] = {
        "queries": str(queries_path),
        "photos": len(queries),
        "index_version": loaded.meta.version,
        "vectors": loaded.meta.count,
        "embedder": loaded.meta.embedder,
        "segmenter": service.segmenter.name,
        "crop": f"{settings.models.crop_mode}, margin {settings.models.crop_margin}"
        + (", mask pooling" if settings.models.mask_pooling else ""),
        "detector_score": settings.models.detector_score,
        "lamp_threshold": settings.models.lamp_threshold,
        "scores": f"softmax T {settings.models.score_temperature:g}"
        f" x confidence^{settings.models.confidence_power:g}",
        "furniture_categories": ", ".join(sorted(FURNITURE)),
        "closeup_rule": (
            f"more than {settings.models.closeup_share:g} of the photo"
            if settings.models.closeup
            else "off"
        ),
        "seconds": round(elapsed, 1),
    }
    closeups: dict[str, CloseupMetrics] = {}
    if closeup is not None:
        closeups = {name: closeup_recall(outs) for name, outs in closeup.outcomes.items()}
        framing = closeup.framing
        meta |= {
            "closeup_framing": f"box + {framing.margin:g} a side, 3:4 or 4:3, "
            f"at least {framing.min_share:g} of the room",
            "closeup_rule_fired": f"{closeup.rooms_fired} of {len(queries)} rooms, "
            f"{closeup.crops_fired} of {len(next(iter(closeup.outcomes.values()), []))} crops",
        }
    files = write_reports(metrics, meta, out_dir, closeups)
    return EvalRun(metrics, meta, files, closeups)


def write_reports(
    metrics: dict[str, MethodMetrics],
    meta: dict[str, object],
    out_dir: Path,
    closeups: dict[str, CloseupMetrics] | None = None,
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "eval.json", out_dir / "eval.md", out_dir / "recall_at_k.png"]
    files[0].write_text(to_json(metrics, meta, closeups))
    files[1].write_text(to_markdown(metrics, meta, closeups))
    plot(metrics, files[2])
    return files
