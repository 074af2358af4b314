"""Memory soak: `roomlens serve` on a real index, N searches of varied photo sizes, its RSS.

Starts `roomlens serve` in a subprocess on a free port against an existing index, posts
--searches photo searches one after another (room photos from the IKEA set resized so their
longer side is one of --sizes, every 10th searching a region of the photo; a text query after
every 25th), and prints the server's resident memory (VmRSS of the process and any children)
at start and after each checkpoint, the growth from the 50th search to the last, the
client-side latency of the photo searches and the server's CPU time per search (steadier than
wall time on a shared machine). A SQLite database is copied to a temporary folder first, so
the server's migrations and its search log never write into it; the index is only read.
Figures and the levers tried: docs/PERFORMANCE.md ("Memory").

    ROOMLENS_DATABASE_URL=sqlite:////work/evalfull/roomlens.db \
    ROOMLENS_INDEX__DIR=/work/evalfull/index .venv/bin/python bench/soak.py
    .venv/bin/python bench/soak.py --env MALLOC_ARENA_MAX=2 --json soak.json

The speed reference printed first is this machine's Lite0 time for one 224 px image on one
thread (onnxruntime, median of 20): figures from different machines compare through it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # reference.py, when imported as a module

from reference import lite0_reference_ms  # noqa: E402

from search.config import Settings  # noqa: E402

DEFAULT_ROOMS = REPO.parent / "shared" / "datasets" / "ikea" / "rooms"
TEXTS = ("green velvet armchair", "white bookcase", "oak dining table", "floor lamp")
REGION_EVERY, TEXT_EVERY = 10, 25
GROWTH_FROM = 50  # the warm-up is over by then: no growth is wanted after it
MIB = 1024 * 1024


# --- the server's memory --------------------------------------------------------------------


def _status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _descendants(pid: int) -> Iterator[int]:
    """`pid` and every process below it."""
    yield pid
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            yield from _descendants(int(child))


def cpu_ms(pid: int) -> float:
    """CPU time (user + system, every thread) of `pid` and the processes below it, ms: the
    cost of a search that other work on the machine barely changes, unlike its wall time."""
    ticks = 0
    for p in set(_descendants(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process tree, MiB: all of it, its anonymous part, the peak."""

    rss: float
    anon: float
    peak: float
    processes: int

    @classmethod
    def of(cls, pid: int) -> Memory:
        pids = sorted(set(_descendants(pid)))
        total = {k: sum(_status_kib(p, k) for p in pids) for k in ("VmRSS", "RssAnon", "VmHWM")}
        return cls(
            rss=total["VmRSS"] / 1024,
            anon=total["RssAnon"] / 1024,
            peak=total["VmHWM"] / 1024,
            processes=len(pids),
        )


# --- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_database(url: str, folder: Path) -> str:
    """A copy of a SQLite database in `folder` (its URL); other databases as they are."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    source = Path(url[len(prefix) :])
    if not source.is_file():
        raise SystemExit(f"no database at {source}")
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").is_file():
            shutil.copy2(f"{source}{suffix}", folder / f"{source.name}{suffix}")
    return prefix + str(folder / source.name)


def roomlens_command() -> list[str]:
    script = Path(sys.executable).parent / "roomlens"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "roomlens.cli"]


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*roomlens_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


def wait_ready(client: httpx.Client, server: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """/readyz's body once the server answers ready (models loaded, index served)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"roomlens serve exited ({server.returncode}):\n{tail(log)}")
        try:
            resp = client.get("/readyz")
            if resp.status_code == 200:
                body: dict[str, Any] = resp.json()
                return body
            if resp.status_code == 503:
                raise SystemExit(f"index not ready: {resp.json().get('detail')}")
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"roomlens serve not ready after 600 s:\n{tail(log)}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# --- the searches ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request of the soak: a photo at a size (with a region or not), or a text query."""

    kind: str  # "photo" | "region" | "text"
    photo: Path | None = None
    long_side: int = 0
    text: str = ""


def plan(photos: Sequence[Path], sizes: Sequence[int], n: int, seed: int) -> list[Request]:
    """`n` photo searches in a seeded order, each at a seeded size from `sizes` (every
    REGION_EVERY-th of a region), and a text query after every TEXT_EVERY-th."""
    rng = np.random.default_rng(seed)
    order = [photos[i] for i in rng.permutation(len(photos))]
    out = []
    for i in range(1, n + 1):
        kind = "region" if i % REGION_EVERY == REGION_EVERY // 2 else "photo"
        out.append(Request(kind, order[i % len(order)], int(rng.choice(sizes))))
        if i % TEXT_EVERY == 0:
            out.append(Request("text", text=TEXTS[(i // TEXT_EVERY) % len(TEXTS)]))
    return out


def jpeg_at(photo: Path, long_side: int) -> tuple[bytes, tuple[int, int]]:
    """The photo resized so its longer side is `long_side`, as JPEG bytes, and its size."""
    with Image.open(photo) as image:
        rgb = image.convert("RGB")
    scale = long_side / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    buffer = io.BytesIO()
    rgb.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), size


def region_of(size: tuple[int, int], i: int) -> str:
    """A box of a third to two thirds of the photo, placed by `i`."""
    width, height = size
    share = 1 / 3 + (i % 4) / 12
    w, h = width * share, height * share
    x0, y0 = (width - w) * ((i % 3) / 2), (height - h) * ((i % 5) / 4)
    return f"{x0:.0f},{y0:.0f},{x0 + w:.0f},{y0 + h:.0f}"


def send(client: httpx.Client, request: Request, i: int) -> tuple[float, int]:
    """Post one request: (client-side ms, instances found). The photo is made before the
    clock starts."""
    # the offline models have no text tower: 400 is their answer to a text query
    ok: tuple[int, ...] = (200, 400) if request.kind == "text" else (200,)
    if request.kind == "text":
        start = time.perf_counter()
        resp = client.post("/v1/search/text", json={"text": request.text, "k": 10})
    else:
        assert request.photo is not None
        data, size = jpeg_at(request.photo, request.long_side)
        form = {"k": "10"} | ({"region": region_of(size, i)} if request.kind == "region" else {})
        start = time.perf_counter()
        resp = client.post("/v1/search", files={"image": ("room.jpg", data)}, data=form)
    ms = (time.perf_counter() - start) * 1000.0
    if resp.status_code not in ok:
        raise SystemExit(
            f"request {i} ({request.kind}): HTTP {resp.status_code}: {resp.text[:300]}"
        )
    instances = len(resp.json().get("instances", [])) if resp.status_code == 200 else 0
    return ms, instances


# --- the soak -------------------------------------------------------------------------------


@dataclass
class Soak:
    """What one soak measured."""

    reference_ms: float
    index: dict[str, Any]
    env: dict[str, str]
    start: Memory | None = None
    checkpoints: dict[int, Memory] = field(default_factory=dict)
    search_ms: list[float] = field(default_factory=list)
    search_cpu_ms: list[float] = field(default_factory=list)  # the server's, per search
    trace: list[dict[str, Any]] = field(default_factory=list)  # per search: size, RSS, ...
    text_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def growth(self, first: int, last: int) -> float:
        return self.checkpoints[last].rss - self.checkpoints[first].rss

    def summary(self) -> dict[str, Any]:
        marks = sorted(self.checkpoints)
        out: dict[str, Any] = {
            "lite0_1img_1thread_ms": self.reference_ms,
            "index": self.index,
            "server_env": self.env,
            "start": asdict(self.start) if self.start else None,
            "checkpoints": {str(k): asdict(v) for k, v in self.checkpoints.items()},
            "search_p50_ms": percentile(self.search_ms, 50),
            "search_p95_ms": percentile(self.search_ms, 95),
            "server_cpu_ms_p50": percentile(self.search_cpu_ms, 50),
            "server_cpu_ms_mean": float(np.mean(self.search_cpu_ms)) if self.search_cpu_ms else 0,
            "searches": len(self.search_ms),
            "text_queries": len(self.text_ms),
            "elapsed_s": self.elapsed_s,
            "trace": self.trace,
        }
        if len(marks) >= 2:
            a, b = growth_marks(marks)
            out["growth"] = {"from": a, "to": b, "mib": self.growth(a, b)}
        return out


def growth_marks(marks: Sequence[int]) -> tuple[int, int]:
    """The checkpoints the growth is taken between: from 50 (else the one before the last)
    to the last."""
    first = GROWTH_FROM if GROWTH_FROM in marks[:-1] else marks[-2]
    return first, marks[-1]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def soak(args: argparse.Namespace, photos: list[Path], env: dict[str, str]) -> Soak:
    requests = plan(photos, args.sizes, args.searches, args.seed)
    marks = sorted({c for c in args.checkpoints if c <= args.searches} | {args.searches})
    with tempfile.TemporaryDirectory(prefix="roomlens-soak-") as tmp:
        folder = Path(tmp)
        server_env = os.environ | env | {"ROOMLENS_INDEX__DIR": str(args.index_dir)}
        server_env["ROOMLENS_DATABASE_URL"] = (
            private_database(args.database_url, folder) if args.copy_db else args.database_url
        )
        port, log = free_port(), folder / "serve.log"
        server = start_server(server_env, port, log)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
                ready = wait_ready(client, server, log)
                result = Soak(args.reference_ms, ready.get("index") or {}, env)
                result.start = Memory.of(server.pid)
                print_memory("start", result.start)
                started = time.perf_counter()
                for i, request in enumerate(requests, start=1):
                    cpu = cpu_ms(server.pid)
                    ms, instances = send(client, request, i)
                    if request.kind == "text":
                        result.text_ms.append(ms)
                        continue
                    result.search_ms.append(ms)
                    result.search_cpu_ms.append(cpu_ms(server.pid) - cpu)
                    result.trace.append(
                        {
                            "kind": request.kind,
                            "long_side": request.long_side,
                            "instances": instances,
                            "ms": round(ms, 1),
                            "cpu_ms": result.search_cpu_ms[-1],
                            "rss_mib": round(Memory.of(server.pid).rss),
                        }
                    )
                    done = len(result.search_ms)
                    if done in marks:
                        result.checkpoints[done] = Memory.of(server.pid)
                        print_memory(f"after {done}", result.checkpoints[done], result.search_ms)
                result.elapsed_s = time.perf_counter() - started
        finally:
            stop_server(server)
    return result


def print_memory(label: str, memory: Memory, search_ms: Sequence[float] = ()) -> None:
    latency = f"   p50 so far {percentile(search_ms, 50):6.0f} ms" if search_ms else ""
    print(
        f"{label:<10} RSS {memory.rss:7.0f} MiB  (anon {memory.anon:6.0f}, peak "
        f"{memory.peak:6.0f}, {memory.processes} process(es)){latency}",
        flush=True,
    )


def print_report(result: Soak) -> None:
    marks = sorted(result.checkpoints)
    print(
        f"\n{len(result.search_ms)} photo searches (+{len(result.text_ms)} text) in "
        f"{result.elapsed_s:.0f} s; p50 {percentile(result.search_ms, 50):.0f} ms, "
        f"p95 {percentile(result.search_ms, 95):.0f} ms per search; server CPU p50 "
        f"{percentile(result.search_cpu_ms, 50):.0f} ms, mean "
        f"{np.mean(result.search_cpu_ms):.0f} ms per search (all threads)"
    )
    if len(marks) >= 2:
        a, b = growth_marks(marks)
        print(f"growth {a} -> {b}: {result.growth(a, b):+.0f} MiB")
    if result.reference_ms:
        print(f"speed reference: Lite0, 1 image, 1 thread: {result.reference_ms:.1f} ms")


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    base = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=base.database_url)
    parser.add_argument("--index-dir", type=Path, default=base.index.dir)
    parser.add_argument("--rooms", type=Path, default=DEFAULT_ROOMS, help="room photos")
    parser.add_argument("--searches", type=int, default=200, help="photo searches")
    parser.add_argument(
        "--checkpoints", type=lambda s: [int(v) for v in s.split(",")], default=[20, 50, 100, 200]
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[640, 960, 1280, 1600, 2000],
        help="longer sides of the photos, px",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument(
        "--in-place", dest="copy_db", action="store_false", help="use the database itself"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the speed reference")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    photos = sorted(args.rooms.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no room photos (*.jpg) in {args.rooms}")
    env = parse_env(args.env)
    args.reference_ms = 0.0 if args.no_reference else lite0_reference_ms(photos[0])
    if args.reference_ms:
        print(f"speed reference: Lite0, 1 image, 1 thread: {args.reference_ms:.1f} ms")
    print(f"serving {args.index_dir} ({len(photos)} room photos, sizes {args.sizes}) {env or ''}")
    result = soak(args, photos, env)
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
