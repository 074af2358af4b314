"""`roomlens train embedder`: the query-side adapter trained on catalog composites (issue #16),
and its measurement on held-out room photos (`--eval-queries`)."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from search.config import Settings
from search.exit_codes import ExitCode


def catalog_vectors(settings: Settings) -> tuple[list[str], npt.NDArray[np.float32]]:
    """(sku, vector) of every active catalog vector of the configured embedder, read from
    the database the index was built from."""
    from search import catalog
    from search.db import make_engine, make_session_factory
    from search.models.registry import embedder_identity

    ident = embedder_identity(settings.models)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            chunks = list(catalog.iter_vectors(session=session, embedder=ident.name, dim=ident.dim))
            ids = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
            rows = catalog.hit_rows(session=session, vector_ids=[int(i) for i in ids])
    finally:
        engine.dispose()
    vectors = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, ident.dim))
    return [rows[int(i)][1].sku for i in ids], vectors.astype(np.float32)


def _cache_key(args: argparse.Namespace, backgrounds: list[Path], embedder: str) -> str:
    text = json.dumps(
        [
            str(args.feed),
            [str(b) for b in backgrounds],
            args.composites,
            args.seed,
            args.categories,
            embedder,
            1,
        ],
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _backgrounds(args: argparse.Namespace) -> list[Path]:
    from search.models.adapter_train import read_photo_list, split_rooms

    photos = read_photo_list(args.backgrounds)
    if args.held_out <= 0:
        return photos
    keep, held = split_rooms([str(p) for p in photos], args.held_out, args.split_seed)
    if args.held_out_queries is not None and args.backgrounds.suffix == ".jsonl":
        held_set = set(held)
        lines = [
            line
            for line in args.backgrounds.read_text().splitlines()
            if line.strip() and str(args.backgrounds.parent / json.loads(line)["image"]) in held_set
        ]
        args.held_out_queries.parent.mkdir(parents=True, exist_ok=True)
        rows = [json.loads(line) for line in lines]
        for row in rows:  # absolute paths: the file may live elsewhere
            row["image"] = str((args.backgrounds.parent / row["image"]).resolve())
        args.held_out_queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [Path(p) for p in keep]


def composite_vectors(
    args: argparse.Namespace, settings: Settings
) -> tuple[list[str], npt.NDArray[np.float32], dict[str, Any]]:
    """Embedded composites (cached under `--cache` by feed, backgrounds, count and seed)."""
    from search.models.adapter_train import CompositeOptions, embed_composites, labelled_cutouts
    from search.models.registry import build_embedder, embedder_identity

    backgrounds = _backgrounds(args)
    name = embedder_identity(settings.models).name
    cache = (
        args.cache / f"composites-{_cache_key(args, backgrounds, name)}.npz" if args.cache else None
    )
    if cache is not None and cache.is_file():
        data = np.load(cache)
        return [str(s) for s in data["skus"]], data["vectors"], json.loads(str(data["info"]))
    started = time.perf_counter()
    categories = None if args.categories == "all" else args.categories.split(",")
    cutouts = labelled_cutouts(args.feed, categories)
    options = CompositeOptions(count=args.composites, seed=args.seed)
    skus, vectors = embed_composites(
        build_embedder(settings.models),
        cutouts,
        backgrounds,
        options,
        progress=not args.no_progress,
    )
    info = {
        "cutouts": len(cutouts),
        "backgrounds": len(backgrounds),
        "composites": len(skus),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, skus=np.asarray(skus), vectors=vectors, info=json.dumps(info))
    return skus, vectors, info


def cmd_train_embedder(args: argparse.Namespace, settings: Settings) -> int:
    from search.models.adapter import LinearAdapter
    from search.models.adapter_train import AdapterOptions, train_adapter
    from search.models.device import set_torch_threads

    set_torch_threads(settings.models.threads)
    report: dict[str, Any] = {}
    if args.eval_only:
        adapter = LinearAdapter.load(args.out)
    else:
        skus, vectors, info = composite_vectors(args, settings)
        cat_skus, cat_vectors = catalog_vectors(settings)
        row_of = {s: i for i, s in enumerate(cat_skus)}
        keep = [i for i, s in enumerate(skus) if s in row_of]
        targets = np.asarray([row_of[skus[i]] for i in keep], dtype=np.int64)
        options = AdapterOptions(
            epochs=args.epochs,
            lr=args.lr,
            temperature=args.temperature,
            decay=args.decay,
            rank=args.rank,
            seed=args.seed,
            progress=not args.no_progress,
        )
        started = time.perf_counter()
        adapter, train_report = train_adapter(vectors[keep], targets, cat_vectors, options)
        train_report["seconds"] = round(time.perf_counter() - started, 1)
        adapter.save(args.out)
        history = train_report.pop("history")
        report |= {"composites": info, "training": train_report, "weights": str(args.out)}
        report["loss_by_epoch"] = [round(h["loss"], 4) for h in history]
    if args.eval_queries is not None:
        temps = [float(t) for t in args.eval_temperatures.split(",")]
        report["eval"] = measure(settings, args.eval_queries, adapter, temps, not args.no_progress)
    print(json.dumps(report, indent=2))
    return ExitCode.OK


def measure(
    settings: Settings, queries_path: Path, adapter: Any, temperatures: list[float], progress: bool
) -> dict[str, dict[str, Any]]:
    """Furniture R@1, R@10 and budget-20/50 on `queries_path`, the configured pipeline with
    and without the adapter on its query vectors, at each score temperature. Each photo is
    segmented and each crop embedded once for all of them."""
    from search.db import make_engine, make_session_factory
    from search.evaluation.metrics import BUDGETS, KS, evaluate
    from search.evaluation.runner import (
        MemoEmbedder,
        MemoSegmenter,
        read_queries,
        run_eval,
        variant,
    )
    from search.factory import build_service
    from search.models.adapter import AdaptedEmbedder

    queries = read_queries(queries_path)
    engine = make_engine(settings.database_url)
    try:
        service = build_service(settings, make_session_factory(engine))
        memo, plain = MemoSegmenter(service.segmenter), MemoEmbedder(service.embedder, size=1024)
        adapted = AdaptedEmbedder(plain, adapter)
        methods = {}
        for t in temperatures:
            methods[f"baseline T={t:g}"] = variant(
                service, memo, embedder=plain, score_temperature=t
            )
            methods[f"adapter T={t:g}"] = variant(
                service, memo, embedder=adapted, score_temperature=t
            )
        outcomes = run_eval(queries, methods, progress=progress)
    finally:
        engine.dispose()
    out: dict[str, dict[str, Any]] = {}
    for t in temperatures:  # paired: furniture items found at budget 20 by one and not the other
        base, adapted_outs = outcomes[f"baseline T={t:g}"], outcomes[f"adapter T={t:g}"]
        gained, lost = _paired(base, adapted_outs)
        out[f"paired T={t:g}"] = {"gained": gained, "lost": lost}
    for name, outs in outcomes.items():
        m = evaluate(outs, groups=["furniture"], ks=KS, budgets=BUDGETS).groups["furniture"]
        out[name] = {
            "items": m.items,
            "R@1": round(m.recall_at[1], 4),
            "R@10": round(m.recall_at[10], 4),
            "budget20": round(m.recall_budget[20], 4),
            "budget50": round(m.recall_budget[50], 4),
        }
    return out


def _paired(base: list[Any], other: list[Any], budget: int = 20) -> tuple[int, int]:
    """(items `other` finds and `base` misses, items `base` finds and `other` misses) among
    the furniture items of each photo, at `budget`."""
    from search.evaluation.metrics import FURNITURE, budget_skus

    gained = lost = 0
    for a, b in zip(base, other, strict=True):
        wanted = {sku for sku, cat in a.expected.items() if cat in FURNITURE}
        found_a, found_b = budget_skus(a, budget) & wanted, budget_skus(b, budget) & wanted
        gained += len(found_b - found_a)
        lost += len(found_a - found_b)
    return gained, lost


def register(tsub: Any) -> None:
    """Add `train embedder` to the `roomlens train` subparsers."""
    p = tsub.add_parser(
        "embedder", help="a query-side adapter, on catalog products composited into rooms"
    )
    p.add_argument("--feed", type=Path, help="catalog JSONL (first image of each product)")
    p.add_argument("--backgrounds", type=Path, help="room photos: a directory or a JSONL")
    p.add_argument(
        "--held-out", type=int, default=0, help="rooms of --backgrounds kept out (seeded hash)"
    )
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument(
        "--held-out-queries", type=Path, default=None, help="write the held-out rows here"
    )
    p.add_argument("--out", type=Path, default=Path("data/models/adapter.pt"))
    p.add_argument("--composites", type=int, default=3000)
    p.add_argument("--categories", default=",".join(_furniture()), help="comma list, or 'all'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature")
    p.add_argument("--decay", type=float, default=0.1, help="weight of ||W - I||²")
    p.add_argument("--rank", type=int, default=None, help="W = I + U Vᵀ of this rank")
    p.add_argument("--cache", type=Path, default=None, help="directory for embedded composites")
    p.add_argument("--eval-queries", type=Path, default=None, help="measure on these rooms")
    p.add_argument("--eval-temperatures", default="0.02", help="score temperatures, comma list")
    p.add_argument("--eval-only", action="store_true", help="measure --out, do not train")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_embedder)


def _furniture() -> tuple[str, ...]:
    from search.models.boxmask_composite import FURNITURE

    return FURNITURE
