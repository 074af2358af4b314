"""`roomlens eval`: run, measure and write the report files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from search.config import Settings
from search.db import make_engine, make_session_factory
from search.evaluation.metrics import BUDGETS, FURNITURE, KS, MethodMetrics, evaluate
from search.evaluation.report import plot, to_json, to_markdown
from search.evaluation.runner import build_methods, read_queries, run_eval
from search.factory import build_service


@dataclass(frozen=True)
class EvalOptions:
    baselines: bool = True
    limit: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class EvalRun:
    metrics: dict[str, MethodMetrics]
    meta: dict[str, object]
    files: list[Path]


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
        started = time.perf_counter()
        outcomes = run_eval(queries, methods, progress=options.progress)
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
        "crop": f"{settings.models.crop_mode}, margin {settings.models.crop_margin}",
        "detector_score": settings.models.detector_score,
        "furniture_categories": ", ".join(sorted(FURNITURE)),
        "seconds": round(elapsed, 1),
    }
    return EvalRun(metrics, meta, write_reports(metrics, meta, out_dir))


def write_reports(
    metrics: dict[str, MethodMetrics], meta: dict[str, object], out_dir: Path
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "eval.json", out_dir / "eval.md", out_dir / "recall_at_k.png"]
    files[0].write_text(to_json(metrics, meta))
    files[1].write_text(to_markdown(metrics, meta))
    plot(metrics, files[2])
    return files
