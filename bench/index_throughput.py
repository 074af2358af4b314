"""Indexer throughput: the pipeline against a plain one-image-at-a-time loop, same models, same
images, same run. Prints images per second per stage and overall.

    .venv/bin/python bench/index_throughput.py                 # the whole IKEA catalog (2,187)
    .venv/bin/python bench/index_throughput.py --limit 200     # a subset

The plain loop does the same job one image at a time: read, hash, decode, segment, crop,
embed (one image per model call, the models using every core), then write the image's
instances and vectors in a transaction of its own, on a fresh SQLite database. The pipeline is
`run_index` itself, as `roomlens index` runs it, on another fresh SQLite database: reads and
decodes in threads ahead of the models, one model worker per core (one intra-op thread each)
on small batches, one transaction per batch, then builds and publishes the index. The models
are whatever the settings name (`ROOMLENS_MODELS__*`), built through `search.models.registry`.

Stage times of the pipeline's threaded stages are summed over its threads (waits included),
so they add up to more than the wall time. The CPU time of each phase (user + system, all
threads) gives the work per image and how busy the cores were: a pipeline that keeps every
core busy cannot beat `cores x 1000 / (its CPU ms per image)` images per second, which bounds
its speed-up over a loop whose models already run on every core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # reference.py, when imported as a module

from reference import reference_line  # noqa: E402

from indexer.pipeline import IndexOptions, IndexReport, run_index  # noqa: E402
from indexer.sources import parse_feed  # noqa: E402
from indexer.stages import IndexModels, new_instance  # noqa: E402
from search import catalog  # noqa: E402
from search.catalog import ImageState  # noqa: E402
from search.config import IndexSettings, ModelSettings, Settings  # noqa: E402
from search.crops import crop_instance  # noqa: E402
from search.db import make_engine, make_session_factory, migrate  # noqa: E402
from search.images import decode_image  # noqa: E402
from search.timing import Timer  # noqa: E402

STAGES = ("read", "hash", "decode", "segment", "crop", "embed", "write")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_feed = REPO.parent / "shared" / "datasets" / "ikea" / "catalog.jsonl"
    parser.add_argument("--feed", type=Path, default=default_feed)
    parser.add_argument("--limit", type=int, default=None, help="first N products only")
    parser.add_argument("--batch-size", type=int, default=16, help="images per transaction")
    parser.add_argument("--read-workers", type=int, default=2)
    parser.add_argument("--model-batch", type=int, default=4)
    parser.add_argument("--model-workers", type=int, default=None, help="default: cores")
    parser.add_argument("--skip-plain", action="store_true", help="time the pipeline only")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def feed_subset(feed: Path, limit: int | None, directory: Path) -> tuple[Path, list[Path]]:
    """A copy of the feed's first `limit` lines with absolute image paths, and those paths."""
    lines = feed.read_text().splitlines()[:limit]
    out, images = directory / "feed.jsonl", []
    with out.open("w") as fh:
        for line in lines:
            row = json.loads(line)
            row["image"] = str((feed.parent / row["image"]).resolve())
            images.append(Path(row["image"]))
            fh.write(json.dumps(row) + "\n")
    return out, images


@dataclass
class Phase:
    """What one phase measured: per-stage wall ms, and its wall and CPU seconds."""

    stages_ms: dict[str, float]
    wall_s: float  # the images' wall time (images per second)
    cpu_s: float  # user + system CPU of the process over `span_s`
    span_s: float  # the wall time the CPU was measured over


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fresh_database(path: Path) -> str:
    url = f"sqlite:///{path}"
    migrate(url)
    return url


def catalog_images(url: str, feed: Path) -> list[ImageState]:
    """Load the feed's products into the database at `url`; every image, by id."""
    sessions = make_session_factory(make_engine(url))
    with sessions() as session, session.begin():
        catalog.upsert_products(session=session, items=parse_feed(feed).items)
        return catalog.scan_images(session=session, embedder="", limit=1_000_000)


def plain_loop(models: IndexModels, settings: Settings, feed: Path, root: Path) -> Phase:
    """One image at a time through every stage, each image written on its own (the baseline)."""
    url = fresh_database(root / "plain.db")
    images = catalog_images(url, feed)
    sessions = make_session_factory(make_engine(url))
    timer = Timer()
    margin, mode = settings.models.crop_margin, settings.models.crop_mode
    cpu, start = cpu_seconds(), time.perf_counter()
    for state in images:
        with timer.stage("read"):
            data = Path(state.resolved).read_bytes()
        with timer.stage("hash"):
            content_hash = hashlib.sha256(data).hexdigest()
        with timer.stage("decode"):
            image = decode_image(data)
        with timer.stage("segment"):
            instances = models.segmenter.segment_product(image)
        rows = []
        for inst in instances:
            with timer.stage("crop"):
                crop = crop_instance(image, inst, margin=margin, mode=mode)
                row = new_instance(inst, models.embedder.name)
            with timer.stage("embed"):
                vector = models.embedder.embed([crop])[0]
            rows.append(replace(row, vector=np.ascontiguousarray(vector).tobytes()))
        with timer.stage("write"), sessions() as session, session.begin():
            ids = catalog.next_vector_ids(session=session, n=len(rows))
            rows = [replace(row, vector_id=i) for row, i in zip(rows, ids, strict=True)]
            catalog.replace_instances(session=session, image_id=state.image_id, instances=rows)
            catalog.set_image_result(
                session=session,
                image_id=state.image_id,
                status="ok" if rows else "no_instance",
                content_hash=content_hash,
                width=image.width,
                height=image.height,
            )
    wall = time.perf_counter() - start
    return Phase(timer.ms, wall, cpu_seconds() - cpu, wall)


def embed_cpu_ms(models: IndexModels, settings: Settings, images: list[Path], batch: int) -> float:
    """CPU milliseconds the embedder takes per image (its crops, `batch` per call) on a sample,
    without the other stages. Call it before any other thread runs."""
    margin, mode = settings.models.crop_margin, settings.models.crop_mode
    crops = []
    for path in images:
        image = decode_image(path.read_bytes())
        for inst in models.segmenter.segment_product(image):
            crops.append(crop_instance(image, inst, margin=margin, mode=mode))
    models.embedder.embed(crops[:batch])  # warm-up
    cpu = cpu_seconds()
    for start in range(0, len(crops), batch):
        models.embedder.embed(crops[start : start + batch])
    return (cpu_seconds() - cpu) * 1000 / len(images)


def pipeline(
    feed: Path, args: argparse.Namespace, root: Path, models: ModelSettings, built: IndexModels
) -> tuple[IndexReport, Phase]:
    """`run_index` as `roomlens index` runs it, with its models built here as the run builds
    them itself (`IndexModels.build`), so that the CPU time measured is the run's own."""
    workers = args.model_workers or os.cpu_count() or 1
    settings = Settings(
        database_url=fresh_database(root / "pipeline.db"),
        index=IndexSettings(dir=root / "index"),
        models=models,
    )
    options = IndexOptions(
        progress=False,
        batch_size=args.batch_size,
        read_workers=args.read_workers,
        model_batch=args.model_batch,
        model_workers=workers,
    )
    cpu, start = cpu_seconds(), time.perf_counter()
    report = run_index(feed, settings=settings, options=options, models=built)
    span = time.perf_counter() - start  # CPU of the feed sync and publish included
    phase = Phase(report.timings_ms, report.images_s, cpu_seconds() - cpu, span)
    return report, phase


def rate(n: int, ms: float) -> str:
    return f"{n / (ms / 1000):8.1f}" if ms > 0 else "       -"


def describe(phase: Phase, n: int, cores: int) -> str:
    per_image = phase.cpu_s * 1000 / n
    return (
        f"{n / phase.wall_s:.1f} images/s; CPU {per_image:.1f} core-ms per image, cores "
        f"{phase.cpu_s / phase.span_s / cores:.0%} busy (that work on every core: at most "
        f"{cores * 1000 / per_image:.1f} images/s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    cores = os.cpu_count() or 1
    models = IndexModels.build(settings.models)
    with tempfile.TemporaryDirectory(prefix="roomlens-bench-") as tmp:
        root = Path(tmp)
        feed, images = feed_subset(args.feed, args.limit, root)
        n = len(images)
        print(reference_line(images[0]) if images else "no images")
        print(
            f"{n} images, segmenter {models.segmenter.name}, embedder {models.embedder.name} "
            f"({settings.models.precision}), "
            f"{cores} cores; pipeline: {args.model_workers or cores} model "
            "workers (1 intra-op thread each when > 1), "
            f"{args.model_batch} images per model call, {args.read_workers} readers; "
            f"plain loop: 1 image at a time, models on every core, one transaction per image"
        )
        (root / "warm-up").mkdir()
        warm_feed, _ = feed_subset(args.feed, 4, root / "warm-up")
        plain_loop(models, settings, warm_feed, root / "warm-up")
        plain = None if args.skip_plain else plain_loop(models, settings, feed, root)
        built = IndexModels.build(settings.models, workers=args.model_workers or cores)
        embed_ms = embed_cpu_ms(built, settings, images[:64], args.model_batch)
        report, piped = pipeline(feed, args, root, settings.models, built)
    figures: dict[str, object] = {"images": n, "pipeline": report.timings_ms}
    figures |= {"pipeline_images_s": n / piped.wall_s, "pipeline_cpu_s": piped.cpu_s}
    print(f"\n{'stage':<10}{'plain ms/img':>14}{'img/s':>10}{'pipeline ms/img':>17}{'img/s':>10}")
    for stage in STAGES:
        p_ms = plain.stages_ms.get(stage, 0.0) if plain else 0.0
        q_ms = report.timings_ms.get(stage, 0.0)
        print(f"{stage:<10}{p_ms / n:14.1f}{rate(n, p_ms)}{q_ms / n:17.1f}{rate(n, q_ms)}")
    plain_wall = rate(n, plain.wall_s * 1000) if plain else ""
    wall = piped.wall_s * 1000
    print(f"{'wall':<10}{'':14}{plain_wall:>10}{wall / n:17.1f}{rate(n, wall)}")
    print(
        f"\npipeline:   {describe(piped, n, cores)}\n            {report.images_processed} "
        f"images in {report.images_s:.1f} s (+ publish "
        f"{report.timings_ms.get('publish', 0) / 1000:.1f} s), {report.vector_count} vectors"
    )
    if plain:
        speedup = plain.wall_s / piped.wall_s
        ceiling = plain.wall_s / (piped.cpu_s / cores)
        figures |= {"plain": plain.stages_ms, "plain_cpu_s": plain.cpu_s, "speedup": speedup}
        print(f"plain loop: {describe(plain, n, cores)}\n            {plain.wall_s:.1f} s")
        bound = plain.wall_s * 1000 / n / (embed_ms / cores)
        figures |= {"embed_cpu_ms_per_image": embed_ms, "bound_embedding_only": bound}
        print(
            f"pipeline speed-up x{speedup:.2f}; at most x{ceiling:.2f} with its CPU work per "
            f"image on these cores.\nThe embedder alone takes {embed_ms:.1f} core-ms per image "
            f"on one thread: with every other stage free, at most x{bound:.2f}."
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
