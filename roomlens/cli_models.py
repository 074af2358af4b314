"""`roomlens models list|fetch`: where each configured model's weights are and whether they load."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from search.config import Settings
from search.models.status import ModelStatus


def _print(rows: Sequence[ModelStatus]) -> int:
    for row in rows:
        state = "ok" if row.loads else "FAILS"
        print(f"{row.role:10s} {row.name:40s} {state}")
        print(f"           path   {row.path or '-'}")
        print(f"           sha256 {row.sha256 or '-'}")
        if row.detail:
            print(f"           {row.detail}")
    return 0 if all(row.loads for row in rows) else 1


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from search.models.registry import list_models

    return _print(list_models(settings.models, check_load=not args.no_load_check))


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from search.models.registry import fetch_models

    return _print(fetch_models(settings.models, timeout_s=args.timeout))


def register(sub: Any) -> None:
    """Add `models list` and `models fetch` to the `roomlens` parser."""
    models = sub.add_parser("models", help="list or download the configured models' weights")
    msub = models.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("list", help="each model: weights path, sha256, and whether it loads")
    p.add_argument("--no-load-check", action="store_true", help="do not try to load them")
    p.set_defaults(func=cmd_list)
    p = msub.add_parser("fetch", help="download weights where there is internet")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per network probe")
    p.set_defaults(func=cmd_fetch)
