"""`roomlens admin ...`: API keys, and the admin API's queries for operators (all merchants).

Every command takes `--merchant NAME` where the API does, and `--json` for machine output.
`roomlens.cli.build_parser` calls `register(sub)`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from search.config import Settings
from search.exit_codes import ExitCode

Command = Callable[[argparse.Namespace, Settings], int]


def _out(text: str = "") -> None:
    print(text)  # noqa: T201 - the CLI's output


def _json(value: Any) -> None:
    def default(obj: Any) -> Any:
        if is_dataclass(obj) and not isinstance(obj, type):
            return asdict(obj)
        if isinstance(obj, datetime):
            return obj.isoformat()
        return str(obj)

    _out(json.dumps(value, default=default, indent=2, sort_keys=True))


def _columns(obj: Any, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in names}


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(h) for h in header]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        _out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    """A session on the migrated database, committed at the end of the block."""
    from search.db import make_engine, make_session_factory, migrate

    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            yield session
    finally:
        engine.dispose()


# --- keys ------------------------------------------------------------------------------------

KEY_FIELDS = ("prefix", "merchant", "is_admin", "label", "created_at", "revoked_at", "last_used_at")


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.keys import create_key

    with _session(settings) as session:
        created = create_key(
            session=session, merchant=args.merchant, is_admin=args.admin, label=args.label
        )
    if args.json:
        _json({"key": created.key, **_columns(created.info, KEY_FIELDS)})
        return ExitCode.OK
    kind = "admin" if args.admin else f"merchant {created.info.merchant!r}"
    _out(f"created {kind} key {created.info.prefix}; it is shown this once, store it now:")
    _out(created.key)
    return ExitCode.OK


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.keys import list_keys

    with _session(settings) as session:
        keys = list_keys(session=session, include_revoked=not args.active)
    if args.json:
        _json([_columns(k, KEY_FIELDS) for k in keys])
        return ExitCode.OK
    _table([[getattr(k, f) for f in KEY_FIELDS] for k in keys], KEY_FIELDS)
    return ExitCode.OK


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.keys import revoke_key

    with _session(settings) as session:
        info = revoke_key(session=session, prefix=args.prefix)
    _out(f"key {info.prefix} revoked at {info.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
    return ExitCode.OK


# --- catalog ---------------------------------------------------------------------------------


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.admin import catalog_stats

    with _session(settings) as session:
        stats = catalog_stats(session=session, merchant=args.merchant)
    if args.json:
        _json({"rows": stats.rows, "totals": stats.totals})
        return ExitCode.OK
    header = ["merchant", "category", "products", "ok", "pending", "failed", "no_instance"]
    header += ["instances", "vectors"]
    rows = [
        [r.merchant, r.category, r.products, r.images["ok"], r.images["pending"]]
        + [r.images["failed"], r.images["no_instance"], r.instances, r.vectors]
        for r in [*stats.rows, stats.totals]
    ]
    rows[-1][:2] = ["(total)", ""]
    _table(rows, header)
    return ExitCode.OK


def cmd_failures(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.admin import PROBLEM_STATUSES, problem_products

    with _session(settings) as session:
        items, total = problem_products(
            session=session,
            merchant=args.merchant,
            statuses=args.status or PROBLEM_STATUSES,
            limit=args.limit,
        )
    if args.json:
        _json({"data": items, "count": total})
        return ExitCode.OK
    _table(
        [[i.sku, i.merchant, i.status, i.reason] for i in items],
        ["sku", "merchant", "status", "reason"],
    )
    _out(f"{len(items)} of {total} shown")
    return ExitCode.OK


def cmd_product(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.admin import product_detail

    with _session(settings) as session:
        product = product_detail(session=session, sku=args.sku)
        images = [
            {
                **_columns(image, ("id", "source", "status", "error", "width", "height")),
                "instances": [
                    {
                        **_columns(inst, ("label", "score", "mask_area", "vector_id")),
                        "box": [inst.x0, inst.y0, inst.x1, inst.y1],
                        "mask": inst.mask_rle,
                    }
                    for inst in image.instances
                ],
            }
            for image in product.images
        ]
        fields = _columns(product, ("sku", "title", "merchant", "category"))
    if args.json:
        _json({**fields, "images": images})
        return ExitCode.OK
    _out(f"{fields['sku']}  {fields['title']}  ({fields['merchant']}, {fields['category']})")
    for image in images:
        _out(f"image {image['id']} {image['status']} {image['error'] or ''}: {image['source']}")
        for inst in image["instances"]:
            box = ", ".join(f"{v:.0f}" for v in inst["box"])
            _out(f"    {inst['label']} {inst['score']:.2f} box [{box}] vector {inst['vector_id']}")
    return ExitCode.OK


# --- index -----------------------------------------------------------------------------------


def cmd_index_info(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.admin import index_status
    from search.errors import RoomlensError
    from search.index_store import open_index_store

    meta, error = None, None
    store = open_index_store(settings.index)
    try:
        version = store.current()
        meta = store.read_meta(version) if version is not None else None
        error = None if version is not None else f"no index published in {store.describe()}"
    except RoomlensError as exc:
        error = str(exc)
    finally:
        store.close()
    with _session(settings) as session:
        status = index_status(session=session, live=meta, merchant=args.merchant)
        build = status.build
        finished = build.finished_at if build is not None else None
    if args.json:
        _json(
            {
                "live": meta,
                "error": error,
                "vectors": status.vectors,
                "pending_images": status.pending_images,
            }
        )
        return ExitCode.OK
    if meta is None:
        _out(f"no live index: {error}")
    else:
        _out(
            f"version     {meta.version} (indexed at {meta.indexed_at}, build finished {finished})"
        )
        _out(f"index       {meta.factory}, {meta.count} vectors of {meta.dim} ({meta.embedder})")
    _out(f"database    {status.vectors} vectors, {status.pending_images} images pending")
    return ExitCode.OK


RUN_FIELDS = ("id", "status", "full", "started_at", "finished_at", "version", "feed")


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.admin import list_runs

    with _session(settings) as session:
        runs, total = list_runs(session=session, limit=args.limit)
        fields = ("counts", "failures", "timings_ms", "progress", "error")
        data = [_columns(run, RUN_FIELDS + fields) for run in runs]
    if args.json:
        _json({"data": data, "count": total})
        return ExitCode.OK
    _table([[row[f] for f in RUN_FIELDS] for row in data], RUN_FIELDS)
    for row in data:
        if row["counts"] or row["error"]:
            _out(f"run {row['id']}: {json.dumps(row['counts'])} {row['error'] or ''}")
    return ExitCode.OK


def cmd_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.duplicates import DuplicateOptions, near_duplicates
    from search.index_store import open_index_store

    store = open_index_store(settings.index)
    index, _ = store.load_current()
    options = DuplicateOptions(
        threshold=args.threshold,
        merchant=args.merchant,
        cross_merchant=not args.same_merchant,
        k=args.k,
        limit=args.limit,
    )
    with _session(settings) as session:
        pairs = near_duplicates(session=session, index=index, options=options)
    if args.json:
        _json(pairs)
        return ExitCode.OK
    rows = [
        [f"{p.score:.4f}", p.a.sku, p.a.merchant, p.b.sku, p.b.merchant, p.matches, p.a.title]
        for p in pairs
    ]
    _table(rows, ["cosine", "sku a", "merchant a", "sku b", "merchant b", "matches", "title a"])
    return ExitCode.OK


def cmd_searches(args: argparse.Namespace, settings: Settings) -> int:
    from merchant.querylog import LogQuery, parse_when, search_log, search_stats

    query = LogQuery(
        merchant=args.merchant,
        since=parse_when(args.since) if args.since else None,
        until=parse_when(args.until, end=True) if args.until else None,
    )
    with _session(settings) as session:
        if args.log:
            rows, total = search_log(session=session, query=query, limit=args.limit)
            stats = None
        else:
            stats = search_stats(session=session, query=query, bucket=args.bucket, top=args.top)
    if stats is None:
        if args.json:
            _json({"data": rows, "count": total})
            return ExitCode.OK
        _table(
            [
                [r.created_at, r.merchant, r.instance_count, r.product_count, f"{r.latency_ms:.0f}"]
                + [" ".join(r.skus[:3])]
                for r in rows
            ],
            ["time", "merchant", "instances", "products", "ms", "top products"],
        )
        _out(f"{len(rows)} of {total} shown")
        return ExitCode.OK
    if args.json:
        _json({**asdict(stats), "zero_result_rate": stats.zero_result_rate})
        return ExitCode.OK
    _print_stats(stats)
    return ExitCode.OK


def _print_stats(stats: Any) -> None:
    rate = stats.zero_result_rate
    _out(
        f"searches {stats.searches}, errors {stats.errors}, zero results {stats.zero_results}"
        + (f" ({rate:.1%})" if rate is not None else "")
    )
    if stats.latency_ms is not None:
        lat = stats.latency_ms
        figures = f"p50 {lat.p50:.0f}, p95 {lat.p95:.0f}, p99 {lat.p99:.0f}, max {lat.max:.0f}"
        _out(f"latency ms: {figures}")
    _out("volume:")
    for start, count in stats.volume:
        _out(f"    {start:%Y-%m-%d %H:%M}  {count}")
    _out("top labels: " + ", ".join(f"{label} {n}" for label, n in stats.top_labels))
    _out("top products:")
    for sku, n in stats.top_products:
        _out(f"    {n:5d}  {sku}  {stats.titles.get(sku, '')}")


# --- parser ----------------------------------------------------------------------------------


def _add(
    sub: argparse._SubParsersAction, name: str, func: Command, help: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=func)
    return parser


def _register_keys(admin: argparse._SubParsersAction) -> None:
    keys = admin.add_parser("keys", help="create, list and revoke API keys")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    p = _add(sub, "create", cmd_keys_create, "create a key (printed once)")
    p.add_argument("--merchant", default=None, help="the merchant the key is limited to")
    p.add_argument("--admin", action="store_true", help="a key that sees every merchant")
    p.add_argument("--label", default=None, help="a note on who holds the key")
    p = _add(sub, "list", cmd_keys_list, "list keys (never their secrets)")
    p.add_argument("--active", action="store_true", help="leave revoked keys out")
    p = _add(sub, "revoke", cmd_keys_revoke, "revoke a key, effective at once")
    p.add_argument("prefix", help="the key's prefix (or the whole key)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `roomlens admin ...` to the top-level subcommands."""
    admin = sub.add_parser("admin", help="API keys and catalog/index/search queries")
    commands = admin.add_subparsers(dest="admin_command", required=True)
    _register_keys(commands)
    p = _add(commands, "catalog", cmd_catalog, "products, images, instances per category")
    p.add_argument("--merchant", default=None)
    p = _add(commands, "failures", cmd_failures, "products whose image failed or showed nothing")
    p.add_argument("--merchant", default=None)
    p.add_argument("--status", action="append", choices=["failed", "no_instance"])
    p.add_argument("--limit", type=int, default=100)
    p = _add(commands, "product", cmd_product, "one product's images and instances")
    p.add_argument("sku")
    p = _add(commands, "index", cmd_index_info, "the live index and the database's vectors")
    p.add_argument("--merchant", default=None)
    p = _add(commands, "runs", cmd_runs, "indexer run history")
    p.add_argument("--limit", type=int, default=20)
    p = _add(commands, "duplicates", cmd_duplicates, "near-duplicate product pairs")
    p.add_argument("--merchant", default=None, help="pairs within this merchant only")
    p.add_argument("--threshold", type=float, default=0.95, help="min cosine (default 0.95)")
    p.add_argument("--same-merchant", action="store_true", help="no cross-merchant pairs")
    p.add_argument("-k", type=int, default=10, help="neighbours per instance")
    p.add_argument("--limit", type=int, default=100)
    p = _add(commands, "searches", cmd_searches, "search figures (or the log with --log)")
    p.add_argument("--merchant", default=None)
    p.add_argument("--from", dest="since", default=None, help="ISO date or datetime (UTC)")
    p.add_argument("--to", dest="until", default=None, help="exclusive; a date: through it")
    p.add_argument("--bucket", choices=["hour", "day"], default="day")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--log", action="store_true", help="list the searches instead")
    p.add_argument("--limit", type=int, default=50, help="searches listed with --log")
