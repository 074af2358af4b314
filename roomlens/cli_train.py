"""`roomlens train masks`: train the box-prompted mask head on COCO-format instance masks."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.config import Settings
from search.exit_codes import ExitCode

if TYPE_CHECKING:
    from search.models.base import Segmenter


def cmd_train_masks(args: argparse.Namespace, settings: Settings) -> int:
    from search.models.boxmask_train import TrainOptions, train_masks
    from search.models.device import set_torch_threads
    from search.models.weights import file_sha256

    set_torch_threads(settings.models.threads)
    out: Path = args.out
    options = TrainOptions(
        epochs=args.epochs,
        aug=args.aug,
        paste=args.paste,
        composites=args.composites if args.feed else 0,
        seed=args.seed,
        progress=not args.no_progress,
    )
    report = train_masks(
        args.annotations,
        out,
        folds=args.folds,
        options=options,
        feed=args.feed,
        segmenter_for=_segmenter_for(settings),
    )
    report["weights"] = str(out)
    report["sha256"] = file_sha256(out)
    report["serve"] = f"ROOMLENS_MODELS__MASK_WEIGHTS={out.resolve()}"
    report["int8"] = "roomlens quantize --models box-mask (with that setting) makes its int8 copy"
    print(json.dumps(report, indent=2))
    return ExitCode.OK


def _segmenter_for(settings: Settings) -> Callable[[Path], Segmenter]:
    """A head file -> the configured lite segmenter masking with it (fp32: no int8 copy of a
    fold's head exists), for the k-fold whole-photo figures."""
    from search.models.boxmask import LiteBoxMasker
    from search.models.registry import build_segmenter

    models = settings.models.model_copy(update={"segmenter": "lite", "masker": "lite0-boxmask"})

    def segmenter(head: Path) -> Segmenter:
        masker = LiteBoxMasker(head, threads=models.threads, expected_sha256=None)
        return build_segmenter(models, masker=masker)

    return segmenter


def register(sub: Any) -> None:
    """Add `train masks` to the `roomlens` parser."""
    train = sub.add_parser("train", help="train roomlens' small models on your own data")
    tsub = train.add_subparsers(dest="train_command", required=True)
    p = tsub.add_parser("masks", help="the box-prompted mask head, on COCO instance masks")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("box-mask-lite0.pt"),
        help="weights file (default ./box-mask-lite0.pt; serve it with "
        "ROOMLENS_MODELS__MASK_WEIGHTS)",
    )
    p.add_argument("--folds", type=int, default=1, help="k > 1: k-fold figures first")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--aug", type=int, default=12, help="augmented crops per instance")
    p.add_argument(
        "--paste", type=float, default=0.0, help="share of crops with real objects pasted over"
    )
    p.add_argument("--feed", type=Path, default=None, help="catalog feed for composites")
    p.add_argument(
        "--composites", type=int, default=600, help="catalog cut-outs composited (with --feed)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_masks)

    from roomlens.cli_train_embedder import register as register_embedder

    register_embedder(tsub)
