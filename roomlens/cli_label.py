"""`roomlens label`: photos, or the indexed catalog, as a COCO or YOLO segmentation data set."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from search.config import Settings
from search.exit_codes import ExitCode


def cmd_label(args: argparse.Namespace, settings: Settings) -> int:
    from search.labeling import LabelOptions, LabelReport

    if (args.photo_dir is None) == (not args.catalog):
        print("roomlens label: give PHOTO_DIR or --catalog (one of them)", file=sys.stderr)
        return ExitCode.USAGE
    options = LabelOptions(
        format=args.format, min_score=args.min_score, progress=not args.no_progress
    )
    report: LabelReport = (
        _label_catalog(args.out, settings, options)
        if args.catalog
        else _label_photos(args.photo_dir, args.out, settings, options)
    )
    body: dict[str, Any] = {
        "images": report.images,
        "objects": report.objects,
        "labelled": report.labelled,
        "reused": report.reused,
        "remote_left_out": report.remote,
        "failed": report.failed,
        "files": [str(f) for f in report.files],
    }
    print(json.dumps(body, indent=2))
    return ExitCode.PARTIAL if report.failed else ExitCode.OK


def _label_photos(photo_dir: Path, out: Path, settings: Settings, options: Any) -> Any:
    from search.labeling import label_photos
    from search.models.device import set_torch_threads
    from search.models.registry import build_masker, build_segmenter

    set_torch_threads(settings.models.threads)
    masker = build_masker(settings.models)  # as search.factory.build_service builds them
    segmenter = build_segmenter(settings.models, masker=masker)
    return label_photos(photo_dir, out, segmenter=segmenter, options=options)


def _label_catalog(out: Path, settings: Settings, options: Any) -> Any:
    from search.db import make_engine, make_session_factory
    from search.labeling import label_catalog

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return label_catalog(out, session=session, options=options)
    finally:
        engine.dispose()


def register(sub: Any) -> None:
    """Add `label` to the `roomlens` parser."""
    p = sub.add_parser(
        "label",
        help="segment photos (or export the indexed catalog) as a training data set",
        description="Write OUT_DIR/annotations.json (COCO instance segmentation) or a YOLO "
        "segmentation tree (labels/, images/ links, data.yaml). Photo runs resume: photos "
        "labelled before (OUT_DIR/.progress.jsonl) are skipped. Exit 3: some photos could "
        "not be read (listed under 'failed').",
    )
    p.add_argument("photo_dir", type=Path, nargs="?", help="folder of photos (recursive)")
    p.add_argument("--catalog", action="store_true", help="the indexed catalog instead")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", choices=("coco", "yolo-seg"), default="coco")
    p.add_argument("--min-score", type=float, default=0.0, help="keep objects scoring >= S")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_label)
