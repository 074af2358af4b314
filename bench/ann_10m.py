"""The vector index at 10M vectors shaped like real embeddings, built, saved and loaded from
disk: memory, build time, single-query latency and recall@10 against exact search.

    .venv/bin/python bench/ann_10m.py --out /work/ann/bench10m            # 10M, 2 threads
    OMP_NUM_THREADS=1 .venv/bin/python bench/ann_10m.py --n 1000000 --threads 1

Vectors come from `bench/ann_1m.py`'s generator (perturbed copies of the real catalog
embeddings), generated chunk by chunk from seeds, so they never all sit in memory: each chunk
is added to the index and scanned once for the exact top-k of every query (chunked brute
force). The index `choose_factory` picks (above 8 GiB of raw vectors: compressed codes in
memory, float16 vectors memory-mapped from `--out` for re-ranking) is saved into a version
folder under `--out`; a fresh process loads it (so no memory of the build is counted) and
measures: resident memory after the load (anonymous and file-backed), recall@10, and
single-query latency p50/p95 on `--threads` threads: first with the re-ranking file dropped
from the page cache ("cold", default settings), then warm for each nprobe x k_factor. The
speed reference is this machine's Lite0 time for one image on one thread (as bench/soak.py
prints it). The version folder is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ann_1m import Generator, real_vectors, recall  # noqa: E402

from search.index import (  # noqa: E402
    FaissIndex,
    IndexMeta,
    choose_factory,
    load_index,
    new_version_id,
    save_index,
    training_size,
    utc_now_iso,
)

GB = 1024**3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="vectors in the index")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=50_000, help="vectors generated at once")
    parser.add_argument("--out", type=Path, default=Path("/work/ann/bench10m"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--factory", default=None, help="default: choose_factory(n, dim)")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--k-factor", type=int, nargs="*", default=[10, 20, 40])
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--noise", type=float, default=1.0, help="noise scale (x data spread)")
    parser.add_argument("--from-db", default=None, help="read real vectors from this database")
    parser.add_argument("--no-reference", action="store_true", help="skip the Lite0 reference")
    parser.add_argument("--keep", action="store_true", help="keep the saved index in --out")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--search", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def memory_gb() -> dict[str, float]:
    """This process's resident memory now (VmRSS, RssAnon, RssFile) and its peak, in GB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "RssAnon", "RssFile", "VmHWM"}:
            fields[key] = int(value.split()[0]) / 1024**2
    fields["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return fields


def reference_ms() -> float:
    """bench/soak.py's speed reference (Lite0, one image, one thread), 0 when unavailable."""
    from soak import DEFAULT_ROOMS, lite0_reference_ms

    photos = sorted(DEFAULT_ROOMS.glob("*.jpg"))
    return lite0_reference_ms(photos[0]) if photos else 0.0


class Truth:
    """A running exact top-k per query over the chunks seen so far."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def update(self, start: int, chunk: np.ndarray) -> None:
        sims = self.queries @ chunk.T
        top = np.argpartition(-sims, self.k - 1, axis=1)[:, : self.k]
        all_s = np.concatenate([self.scores, np.take_along_axis(sims, top, axis=1)], axis=1)
        all_i = np.concatenate([self.ids, top + start], axis=1)
        order = np.argsort(-all_s, axis=1)[:, : self.k]
        self.scores = np.take_along_axis(all_s, order, 1)
        self.ids = np.take_along_axis(all_i, order, 1)


def build(args: argparse.Namespace, gen: Generator, dim: int, truth: Truth) -> dict[str, Any]:
    """Train, fill and save the index into a new version folder under --out; the timings."""
    factory = args.factory or choose_factory(args.n, dim)
    directory = args.out / new_version_id()
    directory.mkdir(parents=True)
    t0 = time.perf_counter()
    needed = training_size(factory, dim)
    sample = gen.chunk(needed, seed=2) if needed else None
    gen_s = time.perf_counter() - t0
    index = FaissIndex.create(dim, factory, train=sample, workdir=directory)
    del sample
    train_s = time.perf_counter() - t0 - gen_s
    add_s = exact_s = 0.0
    for i, start in enumerate(range(0, args.n, args.chunk)):
        t = time.perf_counter()
        chunk = gen.chunk(min(args.chunk, args.n - start), seed=1000 + i)
        t1 = time.perf_counter()
        index.add(np.arange(start, start + len(chunk)), chunk)
        t2 = time.perf_counter()
        truth.update(start, chunk)
        gen_s, add_s, exact_s = gen_s + t1 - t, add_s + t2 - t1, exact_s + time.perf_counter() - t2
        if i % 20 == 19:
            print(f"  {start + len(chunk):>10,} added ({add_s:.0f} s)", flush=True)
    t = time.perf_counter()
    meta = IndexMeta(
        embedder="bench",
        dim=dim,
        metric="ip",
        count=index.ntotal,
        factory=factory,
        version=directory.name,
        indexed_at=utc_now_iso(),
    )
    save_index(index, directory, meta)
    save_s = time.perf_counter() - t
    del index
    gc.collect()
    return {
        "factory": factory,
        "directory": str(directory),
        "train_s": train_s,
        "add_s": add_s,
        "save_s": save_s,
        "build_s": train_s + add_s + save_s,
        "generate_s": gen_s,
        "exact_s": exact_s,
        "build_peak_rss_gb": memory_gb()["peak"],
        "disk_gb": sum(f.stat().st_size for f in directory.iterdir()) / GB,
    }


def drop_cache(directory: Path) -> None:
    """Ask the kernel to drop the version's files from the page cache (clean pages only)."""
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(
    index: FaissIndex, queries: np.ndarray, truth: Truth, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Recall and single-query latency for each nprobe x k_factor (warm page cache)."""
    rows: list[dict[str, Any]] = []
    for nprobe in args.nprobe:
        for k_factor in args.k_factor if hasattr(index, "k_factor") else [None]:
            index.nprobe = nprobe
            if k_factor is not None:
                index.k_factor = k_factor  # type: ignore[attr-defined]
            t = time.perf_counter()
            _, found = index.search(queries, args.k)
            batch_ms = (time.perf_counter() - t) * 1000 / len(queries)
            row = {"nprobe": nprobe, "k_factor": k_factor, "recall_at_k": recall(found, truth.ids)}
            row |= {"batch_ms_per_query": batch_ms, **single_latency(index, queries, args)}
            rows.append(row)
            print_row(row, args.k)
    return rows


def single_latency(
    index: FaissIndex, queries: np.ndarray, args: argparse.Namespace
) -> dict[str, float]:
    times = []
    for q in queries[: args.single]:
        t = time.perf_counter()
        index.search(q, args.k)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def print_row(row: dict[str, Any], k: int) -> None:
    label = f"nprobe {row['nprobe']:>3}, k_factor {row['k_factor']}"
    print(
        f"{label}: recall@{k} {row['recall_at_k']:.3f}; batched "
        f"{row['batch_ms_per_query']:.2f} ms/query; one at a time p50 {row['p50_ms']:.2f} ms, "
        f"p95 {row['p95_ms']:.2f} ms",
        flush=True,
    )


def search_phase(args: argparse.Namespace) -> int:
    """The child process: load the saved version, measure, write search.json beside it."""
    faiss.omp_set_num_threads(args.threads)
    directory = args.search
    queries = np.load(directory.parent / f"{directory.name}.queries.npy")
    truth = Truth(queries, args.k)
    truth.ids = np.load(directory.parent / f"{directory.name}.truth.npy")
    before = memory_gb()
    t = time.perf_counter()
    index, _ = load_index(directory)
    load_s = time.perf_counter() - t
    after = memory_gb()
    loaded = {k: after[k] - before[k] for k in ("VmRSS", "RssAnon", "RssFile")}
    print(
        f"loaded in {load_s:.1f} s: index resident {loaded['VmRSS']:.2f} GB "
        f"(anonymous {loaded['RssAnon']:.2f}, file-backed {loaded['RssFile']:.2f}; "
        f"the process {after['VmRSS']:.2f} GB)",
        flush=True,
    )
    cold: dict[str, float] = {}
    if isinstance(getattr(index, "k_factor", None), int):
        drop_cache(directory)  # nothing of it is mapped yet, so this empties the page cache
        cold = single_latency(index, queries[args.single :], args)
        print(
            f"cold page cache (default nprobe {index.nprobe}, k_factor "
            f"{index.k_factor}, other queries): p50 "  # type: ignore[attr-defined]
            f"{cold['p50_ms']:.2f} ms, p95 {cold['p95_ms']:.2f} ms",
            flush=True,
        )
    rows = measure(index, queries, truth, args)
    searched = memory_gb()
    print(
        f"after the searches: process RSS {searched['VmRSS']:.2f} GB (file-backed "
        f"{searched['RssFile']:.2f} GB: re-ranking pages the searches touched)"
    )
    summary = {"load_s": load_s, "loaded_gb": loaded, "after_search_gb": searched}
    summary |= {"results": rows, "cold": cold}
    (directory.parent / f"{directory.name}.search.json").write_text(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.search is not None:
        return search_phase(args)
    faiss.omp_set_num_threads(args.threads)
    ref = 0.0 if args.no_reference else reference_ms()
    if ref:
        print(f"speed reference: Lite0, 1 image, 1 thread: {ref:.1f} ms")
    real = real_vectors(args.from_db)
    gen, dim = Generator(real, args.noise), real.shape[1]
    queries = gen.chunk(args.queries, seed=999_999)
    truth = Truth(queries, args.k)
    print(
        f"{len(real)} real vectors of dim {dim}; {args.n:,} synthetic in chunks of "
        f"{args.chunk:,}; raw float32 {args.n * dim * 4 / GB:.1f} GB; {args.threads} threads; "
        f"faiss {faiss.__version__} {faiss.SIMDConfig.get_level_name()}",
        flush=True,
    )
    built = build(args, gen, dim, truth)
    print(
        f"factory {built['factory']}: build {built['build_s']:.0f} s (train {built['train_s']:.0f}"
        f", add {built['add_s']:.0f}, save {built['save_s']:.0f}); peak RSS of the build "
        f"{built['build_peak_rss_gb']:.1f} GB; on disk {built['disk_gb']:.1f} GB; besides: "
        f"generating {built['generate_s']:.0f} s, exact top-{args.k} {built['exact_s']:.0f} s",
        flush=True,
    )
    directory = Path(built["directory"])
    stem = directory.parent / directory.name
    np.save(f"{stem}.queries.npy", queries)
    np.save(f"{stem}.truth.npy", truth.ids)
    child = [sys.executable, __file__, "--search", str(directory), "--k", str(args.k)]
    child += ["--threads", str(args.threads), "--single", str(args.single), "--nprobe"]
    child += [str(p) for p in args.nprobe] + ["--k-factor"] + [str(k) for k in args.k_factor]
    subprocess.run(child, check=True)
    searched = json.loads(Path(f"{stem}.search.json").read_text())
    for suffix in (".queries.npy", ".truth.npy", ".search.json"):
        Path(f"{stem}{suffix}").unlink()
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        summary = {"n": args.n, "dim": dim, "threads": args.threads, "reference_ms": ref}
        summary |= built | searched
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
