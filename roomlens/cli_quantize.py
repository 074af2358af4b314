"""`roomlens quantize`: the int8 copies of the EfficientNet-Lite networks (data/models/)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from search.config import Settings
from search.exit_codes import ExitCode

log = logging.getLogger(__name__)

MODELS = ("lite0", "lite2", "box-mask")


def cmd_quantize(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from search.models.boxmask import INT8_FILE, WEIGHTS_FILE
    from search.models.device import set_torch_threads
    from search.models.efficientnet import INT8_FILES
    from search.models.quantize import cosine_to_fp32, quantize_lite, quantize_mask_head
    from search.models.quantize_data import calibration_set
    from search.models.weights import file_sha256

    set_torch_threads(settings.models.threads)
    calibration = calibration_set(args.annotations, photos=args.photos, seed=args.seed)
    held_out = calibration_set(
        args.annotations, photos=args.check, seed=args.seed, skip=args.photos
    )
    checks = held_out.crops + held_out.cutouts
    out_dir = args.out or settings.models.models_dir
    report: dict[str, Any] = {
        "annotations": str(args.annotations),
        "photos": len(calibration.scenes),
        "feeds": len(calibration.crops) + len(calibration.cutouts),
        "check_photos": len(held_out.scenes),
        "seed": args.seed,
        "models": {},
    }
    for variant in [v for v in (0, 2) if f"lite{v}" in args.models]:
        name, _ = INT8_FILES[variant]
        path = out_dir / name
        path.write_bytes(
            quantize_lite(
                variant,
                calibration,
                long_side=settings.models.lamp_long_side,
                progress=not args.no_progress,
            )
        )
        cosine = cosine_to_fp32(variant, path, checks)
        report["models"][name] = {
            "sha256": file_sha256(path),
            "bytes": path.stat().st_size,
            "cosine_to_fp32": {
                "images": len(checks),
                "min": round(float(cosine.min()), 4),
                "mean": round(float(np.mean(cosine)), 4),
            },
        }
    if "box-mask" in args.models:
        path = out_dir / INT8_FILE
        weights = settings.models.models_dir / WEIGHTS_FILE
        path.write_bytes(quantize_mask_head(calibration, weights, progress=not args.no_progress))
        report["models"][INT8_FILE] = {
            "sha256": file_sha256(path),
            "bytes": path.stat().st_size,
            "check": "roomlens eval-masks, with ROOMLENS_MODELS__PRECISION=fp32 and int8",
        }
    print(json.dumps(report, indent=2))
    return ExitCode.OK


def register(sub: Any) -> None:
    """Add `quantize` to the `roomlens` parser."""
    p = sub.add_parser("quantize", help="make the int8 copies of the EfficientNet-Lite networks")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    p.add_argument("--photos", type=int, default=80, help="calibration photos (seeded sample)")
    p.add_argument("--check", type=int, default=20, help="further photos to check cosines on")
    p.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        choices=MODELS,
        help="which int8 copies to make (default: all)",
    )
    p.add_argument("--out", type=Path, default=None, help="default: data/models/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_quantize)
