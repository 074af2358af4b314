"""`roomlens` command line. Each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from search.config import Settings
from search.errors import RoomlensError
from search.exit_codes import ExitCode

log = logging.getLogger("roomlens")

# Subcommand groups that live in their own modules, each with `register(subparsers)`.
PLUGINS = (
    "roomlens.cli_index",
    "roomlens.cli_models",
    "roomlens.cli_admin",
    "roomlens.cli_train",
    "roomlens.cli_label",
    "roomlens.cli_colors",
    "roomlens.cli_segment",
    "roomlens.cli_quantize",
)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from search.db import migrate

    migrate(settings.database_url)
    print(f"database migrated: {settings.database_url}")
    return ExitCode.OK


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.main import create_app
    from search.db import migrate

    migrate(settings.database_url)
    port = args.port or settings.port
    host = args.host or settings.api.host
    print(f"roomlens serving on http://{host}:{port}")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    return ExitCode.OK


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from api.state import build_state
    from search.images import read_image_file
    from search.service import SearchOptions

    image = read_image_file(args.photo, max_pixels=settings.api.max_pixels)
    state = build_state(settings)
    result = state.service.search(image, SearchOptions(k=args.k))
    if args.json:
        from api.mapping import to_response

        print(to_response(result).model_dump_json(indent=2))
        return ExitCode.OK
    print(f"index {result.index.version} ({result.index.vector_count} vectors)")
    for n, group in enumerate(result.groups, 1):
        inst = group.instance
        box = ", ".join(f"{v:.0f}" for v in inst.box.as_list())
        print(f"\n#{n} {inst.label} {inst.score:.2f} box [{box}]")
        for hit in group.products:
            print(f"    {hit.score:.3f}  {hit.sku}  {hit.title}  ({hit.category})")
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items())
    print(f"\n{timings}")
    return ExitCode.OK


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from search.evaluation.closeups import CloseupFraming
    from search.evaluation.command import EvalOptions, eval_command
    from search.evaluation.report import closeup_table, gain_line, summary_lines, table
    from search.evaluation.runner import WHOLE

    options = EvalOptions(
        baselines=not args.no_baselines,
        limit=args.limit,
        progress=not args.no_progress,
        closeups=CloseupFraming(margin=args.closeup_margin) if args.closeups else None,
    )
    run = eval_command(args.queries, args.out, settings=settings, options=options)
    print(table(run.metrics))
    if run.closeups:
        print()
        print(closeup_table(run.closeups))
        print(f"close-up rule fired on {run.meta['closeup_rule_fired']}")
    print()
    for line in summary_lines(run.metrics):
        print(line)
    gain = gain_line(run.metrics, WHOLE)
    if gain:
        print(gain)
    print(f"\n{run.meta['photos']} photos in {run.meta['seconds']} s; reports: ", end="")
    print(", ".join(str(f) for f in run.files))
    return ExitCode.OK


def cmd_eval_masks(args: argparse.Namespace, settings: Settings) -> int:
    from search.evaluation.mask_command import (
        MaskEvalOptions,
        baseline_maskers,
        mask_eval_command,
        mask_table,
    )

    options = MaskEvalOptions(
        images_dir=args.images,
        limit=args.limit,
        whole_photo=not args.no_whole_photo,
        progress=not args.no_progress,
    )
    maskers = baseline_maskers(settings)
    run = mask_eval_command(
        args.annotations, args.out, settings=settings, maskers=maskers, options=options
    )
    print(mask_table(run))
    print(f"\n{run.meta['photos']} photos in {run.meta['seconds']} s; reports: ", end="")
    print(", ".join(str(f) for f in run.files))
    return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roomlens", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("serve", help="serve the HTTP API and the web page")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None, help="default: ROOMLENS_PORT or 8000")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("search", help="search the index with a photo and print the results")
    p.add_argument("photo", type=Path)
    p.add_argument("-k", type=int, default=5, help="products per instance")
    p.add_argument("--json", action="store_true", help="print the API's JSON response")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="measure retrieval quality on photos with known products")
    p.add_argument("--queries", type=Path, required=True, help="JSONL: image, expected SKUs")
    p.add_argument("--out", type=Path, default=Path("eval-report"), help="report folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N photos")
    p.add_argument("--no-baselines", action="store_true", help="skip whole-photo/box baselines")
    p.add_argument(
        "--closeups",
        action="store_true",
        help="also search close-ups cut around each room's objects (with and without the "
        "close-up rule, and whole, unless --no-baselines)",
    )
    p.add_argument(
        "--closeup-margin",
        type=float,
        default=0.25,
        help="close-ups: the object's box grown by this share of its size on each side",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("eval-masks", help="measure instance masks against COCO ground truth")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    p.add_argument("--images", type=Path, default=None, help="default: images/ beside it")
    p.add_argument("--out", type=Path, default=Path("eval-masks"), help="report folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N photos")
    p.add_argument("--no-whole-photo", action="store_true", help="box-prompted only")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval_masks)

    for module in PLUGINS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, Settings())
    except RoomlensError as exc:
        print(f"roomlens: {exc}", file=sys.stderr)
        from search.errors import IndexerBusy

        return ExitCode.BUSY if isinstance(exc, IndexerBusy) else ExitCode.ERROR
    except KeyboardInterrupt:
        print("roomlens: interrupted; the next run resumes where this one stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
