"""What an index run reports: its counts, failures and timings (`IndexReport`), the exit
codes a scheduler acts on, and the progress shown on the terminal and in `index_runs`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from tqdm import tqdm

from indexer import runs
from indexer.sources import FeedLineError
from indexer.stages import ImageResult
from search import catalog
from search.db import utcnow
from search.exit_codes import ExitCode

RunStatus = Literal["running", "succeeded", "partial", "failed", "interrupted"]

EXIT_CODES: dict[str, int] = {  # a run's status to its exit code (search/exit_codes.py)
    "succeeded": ExitCode.OK,
    "partial": ExitCode.PARTIAL,
    "failed": ExitCode.ERROR,
    "busy": ExitCode.BUSY,
    "interrupted": ExitCode.INTERRUPTED,
}


@dataclass
class IndexReport:
    """What a run did; the same figures go to its `index_runs` row."""

    run_id: int | None = None
    status: RunStatus = "running"
    problems: runs.Failures = field(default_factory=runs.Failures)
    products: catalog.UpsertCounts = field(default_factory=catalog.UpsertCounts)
    removed_products: int = 0
    images_total: int = 0
    images_processed: int = 0
    images_unchanged: int = 0
    instances: int = 0
    version: str | None = None
    new_version: bool = False
    vector_count: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    images_s: float = 0.0  # wall time of the load/analyse/write loop

    @property
    def images_failed(self) -> int:
        return self.problems.images_total

    @property
    def failures(self) -> int:
        """Feed lines and images that failed."""
        return self.problems.feed_total + self.problems.images_total

    @property
    def feed_errors(self) -> list[FeedLineError]:
        """The feed lines that were skipped (the first `MAX_LISTED_FAILURES`)."""
        return [FeedLineError(e["line"], e["reason"]) for e in self.problems.feed]

    @property
    def image_failures(self) -> list[tuple[str, str]]:
        """(sku, reason) of the images that failed (the first `MAX_LISTED_FAILURES`)."""
        return [(e["sku"], e["reason"]) for e in self.problems.images]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, ExitCode.ERROR)

    def images_per_second(self) -> float:
        """Images processed (segmented and embedded) per second of the image loop."""
        return self.images_processed / self.images_s if self.images_s > 0 else 0.0

    def counts(self) -> dict[str, Any]:
        return {
            "products_inserted": self.products.inserted,
            "products_updated": self.products.updated,
            "products_unchanged": self.products.unchanged,
            "products_removed": self.removed_products,
            "images_total": self.images_total,
            "images_processed": self.images_processed,
            "images_unchanged": self.images_unchanged,
            "images_failed": self.images_failed,
            "feed_errors": self.problems.feed_total,
            "instances": self.instances,
            "vectors": self.vector_count,
        }

    def summary(self) -> str:
        f = self.problems
        kept = "new" if self.new_version else "unchanged, kept"
        lines = [
            f"run {self.run_id}: {self.status}",
            f"products: {self.products.inserted} new, {self.products.updated} changed, "
            f"{self.products.unchanged} unchanged, {self.removed_products} removed",
            f"images: {self.images_processed} processed, {self.images_unchanged} unchanged, "
            f"{self.images_failed} failed; {self.instances} instances",
            f"index version {self.version} ({kept}): {self.vector_count} vectors",
            f"time: {self.elapsed_s:.1f} s ({self.images_per_second():.2f} images/s); "
            + ", ".join(f"{k} {v / 1000:.1f} s" for k, v in self.timings_ms.items()),
        ]
        lines += f.notes
        lines += [f"feed line {e['line']}: {e['reason']}" for e in f.feed[:20]]
        lines += [f"image of {e['sku']}: {e['reason']}" for e in f.images[:20]]
        shown = min(len(f.feed), 20) + min(len(f.images), 20)
        if f.feed_total + f.images_total > shown:
            lines.append(f"... {f.feed_total + f.images_total - shown} more failures")
        return "\n".join(lines)


class Progress:
    """The terminal progress bar (rate and ETA) and the same figures for `index_runs`."""

    def __init__(self, total: int, show: bool, *, full: bool) -> None:
        self.total = total
        self.full = full
        self.done = 0
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, unit="img", desc="indexing", disable=not show)

    def update(self, batch: list[ImageResult], report: IndexReport) -> None:
        self.done += len(batch)
        self.bar.update(len(batch))
        self.bar.set_postfix(
            new=report.images_processed,
            same=report.images_unchanged,
            failed=report.images_failed,
            refresh=False,
        )

    def snapshot(self, report: IndexReport) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = max(self.total - self.done, 0)
        return {
            "stage": "images",
            "done": self.done,
            "total": self.total,
            "processed": report.images_processed,
            "unchanged": report.images_unchanged,
            "failed": report.images_failed,
            "rate_per_s": round(rate, 2),
            "eta_s": round(left / rate, 1) if rate > 0 else None,
            "updated_at": utcnow().isoformat(),
            runs.FULL_RESET: self.full,
        }

    def close(self) -> None:
        self.bar.close()
