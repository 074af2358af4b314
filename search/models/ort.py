"""onnxruntime sessions on the CPU, made one way for every ONNX-backed model.

Memory (docs/PERFORMANCE.md, "Memory"): every session allocates from one memory arena
shared by the process, not an arena of its own, and plans no memory patterns. Each
session's own arena grows to that session's largest run and never gives the memory back,
and a memory pattern (with its block) is kept per input shape; with one shared arena the
process holds about one run's worth, as the models of a search run one after another. A
run's memory grows with its batch (EfficientNet-Lite2 on 22 crops: ~380 MiB), so a batch of
more than `MAX_BATCH` rows runs as several runs of at most that many. The memory that
making a session leaves free is handed back to the system.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import numpy as np
import onnxruntime as ort

MAX_BATCH = 8  # rows per run, for models whose inputs and outputs all lead with the batch

_ARENA_LOCK = threading.Lock()
_arena_registered = False


def _shared_arena() -> None:
    """Register the process's one CPU arena with onnxruntime (once; default growth: the
    next power of two, as sessions' own arenas grow)."""
    global _arena_registered
    with _ARENA_LOCK:
        if _arena_registered:
            return
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        # 0 / -1: onnxruntime's defaults (no cap, next power of two, its chunk sizes)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _arena_registered = True


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # no process-wide symbols to look in
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (`malloc_trim(0)`; a no-op where the
    C library has none)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class BatchedSession(ort.InferenceSession):
    """An inference session that runs a batch of more than `max_batch` rows (on the leading
    axis, shared by every input and output) as consecutive runs of at most that many, and
    concatenates their outputs: the same results, with a run's memory bounded."""

    max_batch = 0  # 0: every batch in one run

    def run(
        self,
        output_names: list[str] | None,
        input_feed: dict[str, Any],
        run_options: ort.RunOptions | None = None,
    ) -> list[Any]:
        run, step, n = super().run, self.max_batch, _rows(input_feed)
        if not step or n <= step:
            return list(run(output_names, input_feed, run_options))
        parts = []
        for i in range(0, n, step):
            part = {name: value[i : i + step] for name, value in input_feed.items()}
            parts.append(run(output_names, part, run_options))
        return [np.concatenate(outputs, axis=0) for outputs in zip(*parts, strict=True)]


def _rows(feed: dict[str, Any]) -> int:
    """The number of rows of a feed of arrays that all have it on their leading axis, else 0."""
    rows = {v.shape[0] if isinstance(v, np.ndarray) and v.ndim else -1 for v in feed.values()}
    return int(rows.pop()) if len(rows) == 1 and -1 not in rows else 0


def _leading_batch(session: ort.InferenceSession) -> bool:
    """Whether every input and output leads with one symbolic (batch) dimension."""
    args = [*session.get_inputs(), *session.get_outputs()]
    firsts = {str(a.shape[0]) if a.shape and isinstance(a.shape[0], str) else None for a in args}
    return len(firsts) == 1 and None not in firsts


def cpu_session(
    model: bytes | str, threads: int, *, max_batch: int | None = None
) -> BatchedSession:
    """A CPU inference session with every graph optimisation; `threads` > 0 pins the intra-op
    thread count (0 keeps onnxruntime's default: one per physical core). A model whose
    inputs and outputs all lead with a batch runs at most `max_batch` rows at a time
    (default `MAX_BATCH`; 0: no limit)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads sleep instead of spinning: a spinning pool steals the cores from
    # the numpy, faiss and torch work between two model calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # One arena for every session, no memory patterns: see the module's docstring.
    _shared_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.enable_mem_pattern = False
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = BatchedSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    limit = MAX_BATCH if max_batch is None else max_batch
    session.max_batch = limit if _leading_batch(session) else 0
    release_free_memory()  # what the export and the graph optimisation left free
    return session
