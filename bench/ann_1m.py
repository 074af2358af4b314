"""The vector index at 1M vectors shaped like real embeddings: build time, memory, latency and
recall@10 against exact search.

    .venv/bin/python bench/ann_1m.py              # 1M vectors, the factory choose_factory picks
    .venv/bin/python bench/ann_1m.py --n 200000 --factory HNSW32,Flat

Real vectors: the catalog's own embeddings, from an indexed database (`--from-db URL`), or
computed once with the configured embedder over the IKEA catalog photos and cached in
data/cache/. Synthetic vectors: a random real vector moved part of the way towards one of its
10 nearest real neighbours, plus Gaussian noise shaped like the real vectors' covariance (top
principal components), then normalised; so neighbourhoods are as dense and as anisotropic as
the real ones. The queries come from the same generator. Chunks are generated from seeds, so
the vectors are never all held twice: the index holds them, and exact search keeps a running
top-k per query over the same chunks.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from search.index import (  # noqa: E402
    FaissIndex,
    choose_factory,
    l2_normalize,
    training_size,
)

CHUNK = 50_000
CACHE = REPO / "data" / "cache" / "catalog_vectors.npy"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--factory", default=None, help="default: choose_factory(n, dim)")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[16, 32, 64])
    parser.add_argument("--noise", type=float, default=1.0, help="noise scale (x data spread)")
    parser.add_argument("--from-db", default=None, help="read real vectors from this database")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def real_vectors(from_db: str | None) -> np.ndarray:
    """The catalog's embeddings: from a database, the cache, or computed (then cached)."""
    if from_db:
        return _from_db(from_db)
    if CACHE.is_file():
        return np.load(CACHE)
    vectors = _embed_catalog()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.save(CACHE, vectors)
    return vectors


def _from_db(url: str) -> np.ndarray:
    from sqlalchemy import select

    from search.db import InstanceRow, make_engine, make_session_factory

    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        rows = session.scalars(select(InstanceRow.vector).where(InstanceRow.vector.is_not(None)))
        vectors = np.stack([np.frombuffer(raw, dtype=np.float32) for raw in rows if raw])
    engine.dispose()
    return vectors


def _embed_catalog() -> np.ndarray:
    from search.config import Settings
    from search.images import read_image_file
    from search.models.registry import build_embedder

    settings = Settings()
    if settings.sample_dir is None:
        raise SystemExit("no sample catalog: pass --from-db URL")
    embedder = build_embedder(settings.models)
    paths = sorted((settings.sample_dir / "images").glob("*.jpg"))
    print(f"embedding {len(paths)} catalog photos once (cached in {CACHE}) ...", flush=True)
    out = []
    for start in range(0, len(paths), 64):
        images = [read_image_file(p) for p in paths[start : start + 64]]
        out.append(embedder.embed(images))
    return np.concatenate(out).astype(np.float32)


class Generator:
    """Synthetic vectors around the real ones (see the module docstring)."""

    def __init__(self, real: np.ndarray, noise: float, components: int = 256) -> None:
        self.real = l2_normalize(real)
        sims = self.real @ self.real.T
        np.fill_diagonal(sims, -np.inf)
        self.neighbours = np.argsort(-sims, axis=1)[:, :10]
        centred = self.real - self.real.mean(axis=0)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        keep = min(components, vt.shape[0])
        spread = singular[:keep] / np.sqrt(len(real))
        self.basis = (vt[:keep] * spread[:, None]).astype(np.float32)  # (keep, dim)
        self.noise = noise

    def chunk(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        base = rng.integers(0, len(self.real), n)
        other = self.neighbours[base, rng.integers(0, 10, n)]
        t = rng.uniform(0.0, 0.5, (n, 1)).astype(np.float32)
        mixed = (1 - t) * self.real[base] + t * self.real[other]
        z = rng.standard_normal((n, self.basis.shape[0])).astype(np.float32)
        return l2_normalize(mixed + self.noise * (z @ self.basis))

    def chunks(self, n: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
        for i, start in enumerate(range(0, n, CHUNK)):
            yield start, self.chunk(min(CHUNK, n - start), seed * 1000 + i)


def exact_topk(gen: Generator, n: int, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by inner product, over the same chunks the index is built from."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start, chunk in gen.chunks(n, seed=1):
        sims = queries @ chunk.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        all_s = np.concatenate([best_s, np.take_along_axis(sims, top, axis=1)], axis=1)
        all_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-all_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    real = real_vectors(args.from_db)
    gen = Generator(real, args.noise)
    dim = real.shape[1]
    factory = args.factory or choose_factory(args.n, dim)
    queries = gen.chunk(args.queries, seed=999_999)
    cos = float(np.mean(np.max(queries @ gen.real.T, axis=1)))
    print(
        f"{len(real)} real vectors of dim {dim}; {args.n} synthetic; factory {factory}; "
        f"queries' best cosine to a real vector {cos:.2f} ({time.perf_counter() - t0:.1f} s)"
    )

    t = time.perf_counter()
    truth = exact_topk(gen, args.n, queries, args.k)
    exact_s = time.perf_counter() - t
    print(f"exact search of {args.queries} queries: {exact_s:.1f} s", flush=True)

    t = time.perf_counter()
    needed = training_size(factory, dim)
    sample = gen.chunk(needed, seed=2) if needed else None
    index = FaissIndex.create(dim, factory, train=sample)
    train_s = time.perf_counter() - t
    for start, chunk in gen.chunks(args.n, seed=1):
        index.add(np.arange(start, start + len(chunk)), chunk)
    build_s = time.perf_counter() - t
    print(
        f"build: {build_s:.1f} s (training {train_s:.1f} s); peak RSS {rss_gb():.1f} GB; "
        f"vectors {args.n * dim * 4 / 1024**3:.2f} GB",
        flush=True,
    )

    results = []
    settings = args.nprobe if "IVF" in factory else [None]
    for nprobe in settings:
        if nprobe is not None:
            index.nprobe = nprobe
        t = time.perf_counter()
        _, found = index.search(queries, args.k)
        batch_ms = (time.perf_counter() - t) * 1000 / len(queries)
        single = []
        for q in queries[:200]:
            t = time.perf_counter()
            index.search(q, args.k)
            single.append((time.perf_counter() - t) * 1000)
        row = {
            "nprobe": nprobe,
            "recall_at_k": recall(found, truth),
            "batch_ms_per_query": batch_ms,
            "single_p50_ms": float(np.percentile(single, 50)),
            "single_p95_ms": float(np.percentile(single, 95)),
        }
        results.append(row)
        label = f"nprobe {nprobe:>3}" if nprobe is not None else "search"
        print(
            f"{label}: recall@{args.k} {row['recall_at_k']:.3f}; batched "
            f"{batch_ms:.2f} ms/query; one at a time p50 {row['single_p50_ms']:.1f} ms, "
            f"p95 {row['single_p95_ms']:.1f} ms",
            flush=True,
        )
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s; peak RSS {rss_gb():.1f} GB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "n": args.n,
            "dim": dim,
            "factory": factory,
            "build_s": build_s,
            "train_s": train_s,
            "exact_s": exact_s,
            "peak_rss_gb": rss_gb(),
            "results": results,
        }
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
