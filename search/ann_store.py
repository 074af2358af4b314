"""Full-precision vectors kept on disk and memory-mapped: the re-ranking store of a compressed
index (`search.ann`).

Rows are raw float16 (or float32) vectors, row-major, with no header; row r is the r-th vector
appended. A store is a sealed *base* file (read-only, memory-mapped: the one a saved version
holds) followed by a private *pending* file that `append` writes with plain `write` calls (so
a build's vectors go to disk without passing through the process's resident memory) and that
is memory-mapped when it is read. `seal` moves the pending file into a version folder (a
rename on the same file system) or, when there is a base or rows were dropped, writes a fresh
compacted file there. Reads go through `mmap` with `MADV_RANDOM`, and `gather` first asks the
kernel to prefetch every wanted row (`MADV_WILLNEED`), so the random reads of one query are
issued together instead of one page fault after another.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

PENDING_PREFIX = ".refine-"  # a build's vectors file until its save renames it into place


def stale_pending_files(directory: Path) -> list[Path]:
    """The vectors files builds left in `directory` (a build that died before its save)."""
    return sorted(directory.glob(f"{PENDING_PREFIX}*.tmp"))


DTYPES = {"float16": np.float16, "float32": np.float32}
_PAGE = mmap.PAGESIZE
_COPY_ROWS = 65_536


class _Mapped:
    """A read-only memory map of a rows file, seen as a (rows, dim) array."""

    def __init__(self, path: Path, dtype: np.dtype[Any], dim: int) -> None:
        self.path = path
        self.row_bytes = dim * dtype.itemsize
        size = path.stat().st_size
        if size % self.row_bytes:
            raise ValueError(f"{path} is {size} bytes, not a whole number of {dim}-d rows")
        self.rows = size // self.row_bytes
        self._mm: mmap.mmap | None = None
        if self.rows == 0:
            self.array = np.empty((0, dim), dtype=dtype)
            return
        with open(path, "rb") as fh:
            self._mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        with contextlib.suppress(AttributeError, OSError):
            self._mm.madvise(mmap.MADV_RANDOM)  # no read-ahead: rows are read at random
        self.array = np.frombuffer(self._mm, dtype=dtype).reshape(self.rows, dim)

    def prefetch(self, rows: npt.NDArray[np.int64]) -> None:
        """Ask the kernel to start reading these rows' pages (returns at once)."""
        if self._mm is None or not hasattr(mmap, "MADV_WILLNEED"):
            return
        for row in rows.tolist():
            start = row * self.row_bytes
            aligned = start - start % _PAGE
            with contextlib.suppress(OSError, ValueError):
                self._mm.madvise(mmap.MADV_WILLNEED, aligned, start + self.row_bytes - aligned)


class VectorStore:
    """Append-only rows of full-precision vectors on disk (see the module docstring)."""

    def __init__(self, dim: int, dtype: str = "float16", *, workdir: Path | None = None) -> None:
        """An empty store; pending rows are written to a temp file in `workdir`."""
        if dtype not in DTYPES:
            raise ValueError(f"store dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.dim = dim
        self.dtype_name = dtype
        self.dtype: np.dtype[Any] = np.dtype(DTYPES[dtype])
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
        self._base: _Mapped | None = None
        self._pending_path: Path | None = None
        self._pending_fh: Any | None = None
        self._pending_rows = 0
        self._pending_map: _Mapped | None = None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def open(cls, path: Path, dim: int, dtype: str, *, workdir: Path | None = None) -> VectorStore:
        """The sealed rows file `path` (memory-mapped, read-only) as a store's base."""
        store = cls(dim, dtype, workdir=workdir if workdir is not None else Path(path).parent)
        store._base = _Mapped(Path(path), store.dtype, dim)
        return store

    # ------------------------------------------------------------------ size

    @property
    def base_rows(self) -> int:
        return self._base.rows if self._base is not None else 0

    @property
    def rows(self) -> int:
        """Rows stored (live or not: rows are never renumbered until `seal` compacts)."""
        return self.base_rows + self._pending_rows

    @property
    def path(self) -> Path | None:
        """The sealed base file, if any."""
        return self._base.path if self._base is not None else None

    # ------------------------------------------------------------------ writing

    def append(self, vectors: npt.NDArray[np.float32]) -> int:
        """Write `vectors` (n, dim) as new rows; returns the first new row number."""
        first = self.rows
        if self._pending_fh is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.workdir, prefix=PENDING_PREFIX, suffix=".tmp")
            self._pending_path = Path(name)
            self._pending_fh = os.fdopen(fd, "wb")
            self._finalizer = weakref.finalize(self, _discard, self._pending_fh, Path(name))
        self._pending_fh.write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())
        self._pending_rows += int(vectors.shape[0])
        return first

    def seal(self, target: Path, live: npt.NDArray[np.bool_]) -> int:
        """Write the rows where `live` is true into `target` (fsynced); they become the base.

        Without a base and with every row live, the pending file is renamed (no copy).
        Returns the file's size in bytes.
        """
        if live.shape != (self.rows,):
            raise ValueError(f"live mask has shape {live.shape}, expected ({self.rows},)")
        self._flush()
        if self._base is None and self._pending_path is not None and bool(live.all()):
            assert self._pending_fh is not None
            os.fsync(self._pending_fh.fileno())
            self._close_pending(delete=False)
            _move(self._pending_path, target)
        else:
            self._write_compacted(target, live)
            self._close_pending(delete=True)
        self._pending_path, self._pending_rows, self._pending_map = None, 0, None
        self._base = _Mapped(target, self.dtype, self.dim)
        return target.stat().st_size

    def _write_compacted(self, target: Path, live: npt.NDArray[np.bool_]) -> None:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                for start in range(0, self.rows, _COPY_ROWS):
                    keep = np.flatnonzero(live[start : start + _COPY_ROWS]) + start
                    if keep.size:
                        out.write(self._raw(keep).tobytes())
                out.flush()
                os.fsync(out.fileno())
            os.replace(name, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def close(self) -> None:
        """Delete the pending file (the sealed base is left alone)."""
        self._close_pending(delete=True)
        self._pending_path, self._pending_rows, self._pending_map = None, 0, None

    def _close_pending(self, *, delete: bool) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._pending_fh is not None:
            self._pending_fh.close()
            self._pending_fh = None
        if delete and self._pending_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._pending_path.unlink()

    def _flush(self) -> None:
        if self._pending_fh is not None:
            self._pending_fh.flush()

    # ------------------------------------------------------------------ reading

    def gather(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The vectors (n, dim) of these rows as float32."""
        return self._raw(rows).astype(np.float32, copy=False)

    def _raw(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"row out of range 0..{self.rows - 1}")
        split = self.base_rows
        in_base = rows < split
        if in_base.all() and self._base is not None:
            self._base.prefetch(rows)
            return self._base.array[rows]
        out = np.empty((rows.size, self.dim), dtype=self.dtype)
        if self._base is not None and in_base.any():
            self._base.prefetch(rows[in_base])
            out[in_base] = self._base.array[rows[in_base]]
        pending = self._pending_array()
        out[~in_base] = pending[rows[~in_base] - split]
        return out

    def _pending_array(self) -> npt.NDArray[Any]:
        """The pending rows, memory-mapped (re-mapped when rows were appended since)."""
        if self._pending_path is None:
            return np.empty((0, self.dim), dtype=self.dtype)
        if self._pending_map is None or self._pending_map.rows != self._pending_rows:
            self._flush()
            self._pending_map = _Mapped(self._pending_path, self.dtype, self.dim)
        return self._pending_map.array


def _discard(fh: Any, path: Path) -> None:
    """Finalizer: close and delete an unsealed pending file."""
    with contextlib.suppress(Exception):
        fh.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _move(source: Path, target: Path) -> None:
    """Rename `source` to `target`; across file systems (a temp folder on tmpfs), copy it
    next to `target` first, so the final step is still an atomic rename."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        staging = target.with_name(f".{target.name}.copy")
        shutil.copyfile(source, staging)
        with staging.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(staging, target)
        source.unlink()
