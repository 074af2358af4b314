"""`roomlens eval-masks`: run both measurements and write the table, JSON, Markdown and PNG."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from search.config import Settings
from search.evaluation.masks import (
    BoxAsMask,
    BoxPromptedScores,
    CutFromScene,
    WholePhotoScores,
    box_prompted,
    load_ground_truth,
    whole_photo,
)
from search.models.base import BoxMasker


@dataclass(frozen=True)
class MaskEvalOptions:
    images_dir: Path | None = None
    limit: int | None = None  # only the first N photos
    whole_photo: bool = True
    progress: bool = True


@dataclass(frozen=True)
class MaskEvalRun:
    prompted: dict[str, BoxPromptedScores]
    whole: WholePhotoScores | None
    meta: dict[str, object]
    files: list[Path]


def baseline_maskers(settings: Settings) -> dict[str, BoxMasker]:
    """The box itself, the U²-Net-p saliency of the whole photo cut at the box (the lite
    segmenter's masks before the mask head), and the configured box-prompted masker."""
    from search.models.registry import build_masker
    from search.models.u2net import U2NetMasker

    saliency = U2NetMasker(threads=settings.models.threads)
    maskers: dict[str, BoxMasker] = {
        "box": BoxAsMask(),
        "u2netp-scene": CutFromScene("u2netp-scene", saliency.probability),
    }
    configured = build_masker(settings.models)
    if configured is not None:
        maskers[configured.name] = configured
    return maskers


def mask_eval_command(
    annotations: Path,
    out_dir: Path,
    *,
    settings: Settings,
    maskers: dict[str, BoxMasker],
    options: MaskEvalOptions,
) -> MaskEvalRun:
    """Measure `maskers` box-prompted and the configured segmenter on whole photos."""
    from search.models.registry import build_segmenter

    started = time.perf_counter()
    coco, images = load_ground_truth(annotations, options.images_dir)
    images = images[: options.limit]
    prompted = box_prompted(images, maskers, progress=options.progress)
    whole = None
    segmenter_name = None
    if options.whole_photo:
        segmenter = build_segmenter(settings.models)
        segmenter_name = segmenter.name
        whole = whole_photo(coco, images, segmenter, progress=options.progress)
    meta: dict[str, object] = {
        "annotations": str(annotations),
        "photos": len(images),
        "prompted_instances": len(next(iter(prompted.values())).ious) if prompted else 0,
        "segmenter": segmenter_name,
        "seconds": round(time.perf_counter() - started, 1),
    }
    run = MaskEvalRun(prompted, whole, meta, [])
    return MaskEvalRun(prompted, whole, meta, write_mask_reports(run, out_dir))


def mask_table(run: MaskEvalRun) -> str:
    """The figures as a Markdown table (box-prompted), then the whole-photo line."""
    lines = [
        "| method | furniture mIoU | all mIoU | ms / instance |",
        "|---|---|---|---|",
    ]
    for name, scores in run.prompted.items():
        lines.append(
            f"| {name} | {_f(scores.mean(furniture_only=True))} | {_f(scores.mean())} "
            f"| {scores.ms_per_instance:.1f} |"
        )
    furniture = sum(next(iter(run.prompted.values())).furniture) if run.prompted else 0
    lines.append(
        f"\n{run.meta['prompted_instances']} prompted instances ({furniture} furniture-like)"
    )
    if run.whole is not None:
        w = run.whole
        lines.append(
            f"whole photo ({run.meta['segmenter']}): mask AP {_f(w.mask_ap)}, box AP "
            f"{_f(w.box_ap)}, ratio {_f(w.ratio)}; {w.instances} masks, "
            f"{100 * w.box_shaped:.0f}% box-shaped; {w.ms_per_photo:.0f} ms per photo"
        )
    return "\n".join(lines)


def _f(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def write_mask_reports(run: MaskEvalRun, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "masks.json", out_dir / "masks.md", out_dir / "mask_iou.png"]
    payload = {
        "meta": run.meta,
        "box_prompted": {
            name: {
                "furniture_miou": s.mean(furniture_only=True),
                "all_miou": s.mean(),
                "ms_per_instance": s.ms_per_instance,
                "ious": s.ious,
            }
            for name, s in run.prompted.items()
        },
        "whole_photo": None if run.whole is None else {**vars(run.whole), "ratio": run.whole.ratio},
    }
    files[0].write_text(json.dumps(payload, indent=2, default=str))
    meta = "\n".join(f"- {k}: {v}" for k, v in run.meta.items())
    files[1].write_text(f"# Instance masks\n\n{mask_table(run)}\n\n{meta}\n")
    _histograms(run, files[2])
    return files


def _histograms(run: MaskEvalRun, path: Path) -> None:
    """One IoU histogram per method, overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = [i / 20 for i in range(21)]
    for name, scores in run.prompted.items():
        ax.hist(scores.ious, bins=bins, histtype="step", linewidth=1.6, label=name)
    ax.set_xlabel("mask IoU with the ground truth (box-prompted)")
    ax.set_ylabel("instances")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
