"""Indexer throughput: the pipeline against a plain one-image-at-a-time loop, same models, same
images, same run. Prints images per second per stage and overall.

    .venv/bin/python bench/index_throughput.py                 # the whole IKEA catalog (2,187)
    .venv/bin/python bench/index_throughput.py --limit 200     # a subset

The plain loop reads, hashes, decodes, segments, crops and embeds each image in turn (one
image per model call, the models using every core) and writes nothing. The pipeline is
`run_index` itself, as `roomlens index` runs it, on a fresh SQLite database: reads and decodes
in threads ahead of the models, one model worker per core on small batches, one transaction
per batch, then builds and publishes the index. The models are whatever the
settings name (`ROOMLENS_MODELS__*`), built through `search.models.registry`. Stage times of
the pipeline's threaded stages (read, hash, decode) are summed over its threads, so they can
add up to more than the wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from indexer.pipeline import IndexOptions, IndexReport, run_index  # noqa: E402
from indexer.stages import IndexModels  # noqa: E402
from search.config import IndexSettings, Settings  # noqa: E402
from search.crops import crop_instance  # noqa: E402
from search.db import migrate  # noqa: E402
from search.images import decode_image  # noqa: E402
from search.masks import encode_rle  # noqa: E402
from search.models.registry import build_embedder, build_segmenter  # noqa: E402
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


def plain_loop(models: IndexModels, settings: Settings, images: list[Path]) -> Timer:
    """One image at a time through every stage (the baseline)."""
    timer = Timer()
    margin, mode = settings.models.crop_margin, settings.models.crop_mode
    with timer.stage("total"):
        for path in images:
            with timer.stage("read"):
                data = path.read_bytes()
            with timer.stage("hash"):
                hashlib.sha256(data).hexdigest()
            with timer.stage("decode"):
                image = decode_image(data)
            with timer.stage("segment"):
                instances = models.segmenter.segment_product(image)
            for inst in instances:
                with timer.stage("crop"):
                    crop = crop_instance(image, inst, margin=margin, mode=mode)
                    encode_rle(inst.mask)
                with timer.stage("embed"):
                    models.embedder.embed([crop])
    return timer


def pipeline(feed: Path, args: argparse.Namespace, root: Path) -> IndexReport:
    """`run_index` as `roomlens index` runs it: it builds its own models (one intra-op thread
    per model worker, one worker per core)."""
    settings = Settings(
        database_url=f"sqlite:///{root / 'bench.db'}", index=IndexSettings(dir=root / "index")
    )
    migrate(settings.database_url)
    options = IndexOptions(
        progress=False,
        batch_size=args.batch_size,
        read_workers=args.read_workers,
        model_batch=args.model_batch,
        model_workers=args.model_workers,
    )
    return run_index(feed, settings=settings, options=options)


def rate(n: int, ms: float) -> str:
    return f"{n / (ms / 1000):8.1f}" if ms > 0 else "       -"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    models = IndexModels(build_segmenter(settings.models), build_embedder(settings.models))
    with tempfile.TemporaryDirectory(prefix="roomlens-bench-") as tmp:
        feed, images = feed_subset(args.feed, args.limit, Path(tmp))
        n = len(images)
        print(
            f"{n} images, segmenter {models.segmenter.name}, embedder {models.embedder.name}, "
            f"{os.cpu_count()} cores; pipeline: {args.model_workers or os.cpu_count()} model "
            "workers (1 intra-op thread each when > 1), "
            f"{args.model_batch} images per model call, {args.read_workers} readers; "
            f"plain loop: 1 image at a time, models on every core"
        )
        plain_loop(models, settings, images[:4])  # warm-up
        plain = None if args.skip_plain else plain_loop(models, settings, images)
        report = pipeline(feed, args, Path(tmp))
    figures = {"images": n, "pipeline": report.timings_ms, "pipeline_images_s": report.images_s}
    print(f"\n{'stage':<10}{'plain ms/img':>14}{'img/s':>10}{'pipeline ms/img':>17}{'img/s':>10}")
    for stage in STAGES:
        p_ms = plain.ms.get(stage, 0.0) if plain else 0.0
        q_ms = report.timings_ms.get(stage, 0.0)
        print(f"{stage:<10}{p_ms / n:14.1f}{rate(n, p_ms)}{q_ms / n:17.1f}{rate(n, q_ms)}")
    wall = report.images_s * 1000
    print(
        f"{'wall':<10}{'':14}{rate(n, plain.ms['total']) if plain else '':>10}"
        f"{wall / n:17.1f}{rate(n, wall)}"
    )
    print(
        f"pipeline: {report.images_processed} images in {report.images_s:.1f} s "
        f"(+ publish {report.timings_ms.get('publish', 0) / 1000:.1f} s), "
        f"{report.vector_count} vectors"
    )
    if plain:
        speedup = plain.ms["total"] / wall
        figures |= {"plain": plain.ms, "speedup": speedup}
        print(f"plain loop: {plain.ms['total'] / 1000:.1f} s; pipeline speed-up x{speedup:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
