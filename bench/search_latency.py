"""Latency of POST /v1/search over the dev room photos, on the configured (offline) models.

Needs an indexed catalog: run `make demo` (or `roomlens migrate && roomlens index FEED`)
first, or point --database-url / --index-dir at one. The app runs in-process (models loaded
once, the full HTTP stack: multipart parsing, the inference queue, JSON encoding); each photo
is searched sequentially, then by --clients concurrent clients, with the photo cache off
(every search segments and embeds). Then, with the cache on, each photo is searched again
with a category filter, as the page does when a filter changes. Prints the machine's speed
reference, p50/p95 of the request time and of every stage the server reports, and the cost
of the mask encodings.

    .venv/bin/python bench/search_latency.py --limit 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # reference.py, when imported as a module

from reference import reference_line  # noqa: E402

from api.main import create_app  # noqa: E402
from api.mapping import column_major  # noqa: E402
from api.state import build_state  # noqa: E402
from search.config import IndexSettings, Settings  # noqa: E402
from search.masks import decode_rle, encode_rle, mask_to_polygons  # noqa: E402
from search.photo_cache import PhotoCache  # noqa: E402

STAGES = ("queue", "decode", "segment", "embed", "search", "catalog", "encode")


@dataclass
class Run:
    """What one mode measured: wall time per request (ms), server stages, response sizes."""

    name: str
    wall_ms: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    instances: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0

    def record(self, wall_ms: float, body: dict[str, Any], size: int) -> None:
        self.wall_ms.append(wall_ms)
        self.bodies.append(body)
        self.sizes.append(size)
        self.instances.append(len(body["instances"]))
        for stage, ms in body["timings_ms"].items():
            self.stages.setdefault(stage, []).append(ms)
        server = sum(body["timings_ms"].values())
        self.stages.setdefault("http+json (rest)", []).append(max(0.0, wall_ms - server))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def search_once(
    client: TestClient, photo: Path, k: int, **form: str
) -> tuple[float, dict[str, Any], int]:
    data = photo.read_bytes()
    start = time.perf_counter()
    fields = {"k": str(k), **form}
    resp = client.post("/v1/search", files={"image": (photo.name, data)}, data=fields)
    wall = (time.perf_counter() - start) * 1000.0
    if resp.status_code != 200:
        raise SystemExit(f"{photo.name}: HTTP {resp.status_code}: {resp.text[:300]}")
    return wall, resp.json(), len(resp.content)


def run_sequential(client: TestClient, photos: list[Path], k: int, masks: str) -> Run:
    run = Run("sequential")
    start = time.perf_counter()
    for photo in photos:
        run.record(*search_once(client, photo, k, masks=masks))
    run.elapsed_s = time.perf_counter() - start
    return run


def run_refiltered(client: TestClient, photos: list[Path], k: int, masks: str) -> Run:
    """Each photo searched, then (timed) searched again with a category filter."""
    run = Run("new filters")
    elapsed = 0.0
    for photo in photos:
        search_once(client, photo, k, masks=masks)
        start = time.perf_counter()
        run.record(*search_once(client, photo, k, masks=masks, category="chair"))
        elapsed += time.perf_counter() - start
    run.elapsed_s = elapsed
    return run


def run_concurrent(client: TestClient, photos: list[Path], k: int, clients: int, masks: str) -> Run:
    run = Run(f"{clients} clients")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for result in pool.map(lambda p: search_once(client, p, k, masks=masks), photos):
            run.record(*result)
    run.elapsed_s = time.perf_counter() - start
    return run


def encoding_split(bodies: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per photo: ms to write its masks as COCO RLE and as polygons (masks decoded from the
    responses; the server's `encode` stage also builds the rest of the JSON)."""
    out: dict[str, list[float]] = {"rle": [], "polygons": []}
    for body in bodies:
        # row-major, as the segmenter makes them (decode_rle gives column-major arrays)
        masks = [
            np.ascontiguousarray(decode_rle(i["mask"]["rle"]))
            for i in body["instances"]
            if i["mask"] and i["mask"]["rle"]
        ]
        for name, encode in (("rle", encode_rle), ("polygons", mask_to_polygons)):
            start = time.perf_counter()
            for mask in masks:
                encode(column_major(mask) if name == "rle" else mask)
            out[name].append((time.perf_counter() - start) * 1000.0)
    return out


def print_report(runs: list[Run], split: dict[str, list[float]], workers: int) -> None:
    print(f"\nPOST /v1/search, inference workers: {workers}; photo cache off, then on")
    print(f"{'mode':<14}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}{'photos/s':>10}")
    for run in runs:
        n = len(run.wall_ms)
        print(
            f"{run.name:<14}{n:>5}{percentile(run.wall_ms, 50):>10.0f}"
            f"{percentile(run.wall_ms, 95):>10.0f}{statistics.fmean(run.wall_ms):>10.0f}"
            f"{n / run.elapsed_s:>10.2f}"
        )
    for run in runs:
        print(f"\nstages, {run.name} (ms per request)")
        print(f"{'stage':<18}{'p50':>9}{'p95':>9}{'mean':>9}{'share':>8}")
        total = sum(statistics.fmean(v) for v in run.stages.values())
        names = [s for s in STAGES if s in run.stages] + [s for s in run.stages if s not in STAGES]
        for stage in names:
            values = run.stages[stage]
            mean = statistics.fmean(values)
            print(
                f"{stage:<18}{percentile(values, 50):>9.1f}{percentile(values, 95):>9.1f}"
                f"{mean:>9.1f}{100 * mean / total:>7.1f}%"
            )
        print(
            f"instances per photo: mean {statistics.fmean(run.instances):.1f}; "
            f"response size: mean {statistics.fmean(run.sizes) / 1024:.0f} KiB"
        )
    print("\nmask encodings inside `encode` (ms per photo, all its instances)")
    for name, values in split.items():
        print(f"  {name:<10} p50 {percentile(values, 50):7.1f}   p95 {percentile(values, 95):7.1f}")


def dev_photos(queries: Path, limit: int | None) -> list[Path]:
    lines = [json.loads(line) for line in queries.open() if line.strip()]
    photos = [queries.parent / q["image"] for q in lines]
    return photos[:limit] if limit else photos


def main(argv: Sequence[str] | None = None) -> int:
    base = Settings()
    default_queries = base.sample_dir / "queries-dev.jsonl" if base.sample_dir else None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=base.database_url)
    parser.add_argument("--index-dir", type=Path, default=base.index.dir)
    parser.add_argument("--queries", type=Path, default=default_queries, help="queries-dev.jsonl")
    parser.add_argument("--limit", type=int, default=20, help="photos (0 = all 105)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=2, help="untimed searches first")
    parser.add_argument("-k", type=int, default=10, help="products per instance")
    parser.add_argument(
        "--masks",
        default="both",
        choices=["both", "rle", "polygons", "none"],
        help="the form field",
    )
    args = parser.parse_args(argv)
    if args.queries is None or not args.queries.is_file():
        parser.error("no queries file: pass --queries .../queries-dev.jsonl")
    settings = base.model_copy(
        update={
            "database_url": args.database_url,
            "index": IndexSettings(dir=args.index_dir),
            "api": base.api.model_copy(update={"photo_cache_mb": 0}),
        }
    )
    photos = dev_photos(args.queries, args.limit or None)
    print(reference_line(photos[0]))
    print(
        f"loading models ({settings.models.segmenter} + {settings.models.embedder}, "
        f"{settings.models.precision}) ..."
    )
    state = build_state(settings)
    with TestClient(create_app(settings, state=state)) as client:
        ready = client.get("/readyz").json()
        if ready["status"] != "ready":
            raise SystemExit(f"index not ready: {ready['detail']} (run `make demo` first)")
        print(f"index {ready['index']['version']}: {ready['index']['vector_count']} vectors")
        for photo in photos[: args.warmup]:
            search_once(client, photo, args.k)
        runs = [run_sequential(client, photos, args.k, args.masks)]
        if args.clients > 1:
            runs.append(run_concurrent(client, photos, args.k, args.clients, args.masks))
        state.service.photo_cache = PhotoCache(base.api.photo_cache_mb << 20)  # as served
        runs.append(run_refiltered(client, photos, args.k, args.masks))
    split = encoding_split(runs[0].bodies)
    print_report(runs, split, settings.api.inference_workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
