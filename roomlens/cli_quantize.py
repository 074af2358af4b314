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

    from search.models.boxmask import INT8_FILE, INT8_SHA256
    from search.models.device import set_torch_threads
    from search.models.efficientnet import INT8_FILES
    from search.models.own_files import mask_head_file
    from search.models.quantize import cosine_to_fp32, quantize_lite, quantize_mask_head
    from search.models.quantize_data import calibration_set
    from search.models.weights import file_sha256

    set_torch_threads(settings.models.threads)
    calibration = calibration_set(args.annotations, photos=args.photos, seed=args.seed)
    held_out = calibration_set(
        args.annotations, photos=args.check, seed=args.seed, skip=args.photos
    )
    checks = held_out.crops + held_out.cutouts
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "annotations": str(args.annotations),
        "photos": len(calibration.scenes),
        "feeds": len(calibration.crops) + len(calibration.cutouts),
        "check_photos": len(held_out.scenes),
        "seed": args.seed,
        "models": {},
    }
    for variant in [v for v in (0, 2) if f"lite{v}" in args.models]:
        name, card = INT8_FILES[variant]
        path = out_dir / name
        path.write_bytes(
            quantize_lite(
                variant,
                calibration,
                long_side=settings.models.lamp_long_side,
                progress=not args.no_progress,
            )
        )
        cosine = cosine_to_fp32(variant, path, checks) if checks else None
        sha256 = file_sha256(path)
        report["models"][name] = {
            "sha256": sha256,
            "on_its_card": sha256 == card,
            "bytes": path.stat().st_size,
            "cosine_to_fp32": None  # no photo was left over to check on
            if cosine is None
            else {
                "images": len(checks),
                "min": round(float(cosine.min()), 4),
                "mean": round(float(np.mean(cosine)), 4),
            },
        }
    if "box-mask" in args.models:
        path = out_dir / INT8_FILE
        head = mask_head_file(settings.models)
        path.write_bytes(
            quantize_mask_head(
                calibration,
                head.path,
                card_sha256=head.card_sha256,
                progress=not args.no_progress,
            )
        )
        sha256 = file_sha256(path)
        report["models"][INT8_FILE] = {
            "sha256": sha256,
            "on_its_card": sha256 == INT8_SHA256,
            "bytes": path.stat().st_size,
            "head": str(head.path),
            "check": "roomlens eval-masks, with ROOMLENS_MODELS__PRECISION=fp32 and int8",
        }
    if out_dir.resolve() == settings.models.models_dir.resolve():
        report["serve"] = "data/models/: a copy not on its card is refused until its card is"
    else:
        report["serve"] = f"ROOMLENS_MODELS__INT8_DIR={out_dir.resolve()}"
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
    p.add_argument(
        "--out",
        type=Path,
        default=Path("int8"),
        help="directory for the copies (default ./int8; serve them with "
        "ROOMLENS_MODELS__INT8_DIR; data/models/ remakes the committed ones)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_quantize)
