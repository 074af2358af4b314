"""`roomlens eval-colors`: score dominant colours of catalog cut-outs against their colour text."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from search.config import Settings
from search.exit_codes import ExitCode


def cmd_eval_colors(args: argparse.Namespace, settings: Settings) -> int:
    from search.evaluation.colors import (
        UNREADABLE,
        ColorEvalOptions,
        color_table,
        eval_colors_command,
    )

    options = ColorEvalOptions(limit=args.limit, progress=not args.no_progress)
    run = eval_colors_command(args.feed, args.out, options=options)
    print(color_table(run.scores))
    skipped = ", ".join(f"{n} {reason}" for reason, n in run.skipped.items())
    print(f"\n{run.meta['scored']} of {run.meta['labelled']} single-colour products scored", end="")
    print(f" (skipped: {skipped})" if skipped else "", end="")
    print(f"; {run.meta['ms_per_mask']} ms per mask; {run.meta['seconds']} s; reports: ", end="")
    print(", ".join(str(f) for f in run.files))
    return ExitCode.PARTIAL if run.skipped.get(UNREADABLE) else ExitCode.OK


def register(sub: Any) -> None:
    """Add `eval-colors` to the `roomlens` parser."""
    p = sub.add_parser(
        "eval-colors", help="score dominant colours of catalog cut-outs against their colour text"
    )
    p.add_argument("--feed", type=Path, required=True, help="catalog JSONL with color and image")
    p.add_argument("--out", type=Path, default=Path("eval-colors"), help="report folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N labelled products")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval_colors)
