"""`roomlens index`, `roomlens doctor` and `roomlens runs`: thin commands over `indexer`.

Exit codes of `roomlens index` (for cron and systemd): 0 done; 3 done, but some feed lines or
images failed or removals were skipped (details in `roomlens runs` / `index_runs`); 1 failed
(the next run resumes); 75 another run holds the lock (EX_TEMPFAIL: try again later); 130
interrupted (SIGINT or SIGTERM; the next run resumes).
`roomlens doctor`: 0 healthy; 1 the database and the index disagree (it says how); 75 a run
is in progress.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from search.config import Settings
from search.errors import IndexerBusy
from search.exit_codes import ExitCode


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `index`, `doctor` and `runs` subcommands to the `roomlens` parser."""
    p = sub.add_parser(
        "index",
        help="index a catalog feed (JSONL or CSV), incrementally",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("feed", type=Path)
    p.add_argument("--full", action="store_true", help="re-segment and re-embed every image")
    p.add_argument("--limit", type=int, default=None, help="index only the first N products")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--batch-size", type=int, default=None, help="images per model batch")
    p.add_argument("--read-workers", type=int, default=4, help="threads reading images")
    p.add_argument(
        "--model-workers",
        type=int,
        default=None,
        help="threads running the models (default: cores)",
    )
    p.add_argument("--model-batch", type=int, default=4, help="images per model call")
    p.add_argument("--keep-versions", type=int, default=2, help="index versions kept on disk")
    p.add_argument(
        "--max-removed-fraction",
        type=float,
        default=0.5,
        help="refuse to remove more than this share of the catalog (default 0.5)",
    )
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", default=None, help="Ray cluster (default: a local Ray)")
    p.add_argument("--ray-actors", type=int, default=1, help="model actors on the cluster")
    p.add_argument("--ray-cpus-per-actor", type=float, default=1.0)
    p.add_argument("--connect-timeout", type=float, help="seconds, image URLs (default 5)")
    p.add_argument("--read-timeout", type=float, help="seconds, image URLs (default 20)")
    p.add_argument("--max-image-bytes", type=int, help="default 20 MiB")
    p.add_argument("--retries", type=int, help="retries of transient URL failures (default 3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("doctor", help="check that the database and the index agree")
    p.add_argument("--sample", type=int, default=256, help="vectors compared one by one")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("runs", help="the indexer's run history, newest first")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_index(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.pipeline import IndexOptions, run_index
    from search.db import migrate

    migrate(settings.database_url)
    given = {
        "connect_timeout_s": args.connect_timeout,
        "read_timeout_s": args.read_timeout,
        "max_bytes": args.max_image_bytes,
        "retries": args.retries,
    }
    fetch = settings.fetch.policy(**{k: v for k, v in given.items() if v is not None})
    options = IndexOptions(
        full=args.full,
        progress=not args.no_progress,
        limit=args.limit,
        batch_size=args.batch_size,
        read_workers=args.read_workers,
        model_workers=args.model_workers,
        model_batch=args.model_batch,
        keep_versions=args.keep_versions,
        max_removed_fraction=args.max_removed_fraction,
        fetch=fetch,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        ray_cpus_per_actor=args.ray_cpus_per_actor,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)  # systemd stop: record "interrupted"
    try:
        report = run_index(args.feed, settings=settings, options=options)
    except IndexerBusy as exc:
        _err(f"roomlens: {exc}; try again later")
        return ExitCode.BUSY
    except KeyboardInterrupt:
        _err("roomlens: interrupted; the next run resumes where this one stopped")
        return ExitCode.INTERRUPTED
    if args.json:
        body = {"run_id": report.run_id, "status": report.status, **report.counts()}
        body |= {"version": report.version, "timings_ms": report.timings_ms}
        body |= {"failures": report.problems.to_json()}
        _out(json.dumps(body, indent=2))
    else:
        _out(report.summary())
    return report.exit_code


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.doctor import Expected, run_doctor
    from search.models.registry import embedder_identity

    embedder = embedder_identity(settings.models)  # no weights loaded
    report = run_doctor(settings, Expected(embedder.name, embedder.dim), sample=args.sample)
    if args.json:
        findings = [f.__dict__ for f in report.findings]
        _out(json.dumps({"exit_code": report.exit_code, "findings": findings}, indent=2))
    else:
        _out(report.summary())
    return report.exit_code


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.runs import latest_runs
    from search.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = [_run_json(run) for run in latest_runs(session=session, limit=args.limit)]
    finally:
        engine.dispose()
    if args.json:
        _out(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        progress = row["progress"]
        _out(
            f"{row['id']:>5} {row['status']:<11} {row['started_at']:%Y-%m-%d %H:%M:%S} "
            f"{progress.get('done', 0)}/{progress.get('total', '?')} images "
            f"version {row['version'] or '-'} {row['error'] or ''}"
        )
    return 0


def _run_json(run: Any) -> dict[str, Any]:
    names = ("id", "feed", "full", "status", "pid", "started_at", "finished_at", "version")
    extra = ("counts", "failures", "timings_ms", "progress", "error")
    return {name: getattr(run, name) for name in names + extra}


def main(argv: Sequence[str] | None = None) -> int:
    """These subcommands alone: `python -m roomlens.cli_index index FEED` (the `roomlens`
    entry point registers them too)."""
    parser = argparse.ArgumentParser(prog="roomlens")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    code: int = args.func(args, Settings())
    return code


if __name__ == "__main__":
    sys.exit(main())
