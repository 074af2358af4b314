"""`roomlens segment PHOTO`: the photo's objects as facts (the API's `/v1/segment`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.config import Settings
from search.exit_codes import ExitCode

if TYPE_CHECKING:
    from search.scene import Scene


def cmd_segment(args: argparse.Namespace, settings: Settings) -> int:
    from search.factory import build_segmentation
    from search.images import read_image_file
    from search.scene_service import SceneRequest, photo_coco, photo_scene
    from search.segmentation import parse_box

    request = SceneRequest(tuple(parse_box(text) for text in args.box), args.min_score)
    image = read_image_file(args.photo, max_pixels=settings.api.max_pixels)
    segmentation = build_segmentation(settings)
    if args.coco:
        print(json.dumps(photo_coco(segmentation, image, request, file_name=str(args.photo))))
        return ExitCode.OK
    result = photo_scene(segmentation, image, request)
    if args.json:
        from api.mapping import segment_response

        print(segment_response(result).model_dump_json(indent=2))
        return ExitCode.OK
    print(result.scene.description)
    print()
    for line in scene_table(result.scene):
        print(line)
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items())
    print(f"\n{result.scene.width}x{result.scene.height} px; {timings}")
    return ExitCode.OK


def scene_table(scene: Scene) -> list[str]:
    """One line per instance: id, label, score, colours, share of the photo, relations."""
    from search.relations import PREDICATES

    rows = [("id", "label", "score", "colours", "area", "relations (to ids)")]
    for inst in scene.instances:
        colours = ", ".join(f"{c.name} {c.share:.0%}" for c in inst.colors) or "-"
        objects: dict[str, list[str]] = {}
        for r in inst.relations:
            objects.setdefault(r.predicate, []).append(str(r.object))
        relations = "; ".join(
            f"{p.replace('_', ' ')} {','.join(ids)}"
            for p, ids in sorted(objects.items(), key=lambda kv: PREDICATES.index(kv[0]))
        )
        rows.append(
            (
                str(inst.id),
                inst.label,
                f"{inst.score:.2f}",
                colours,
                f"{inst.area:.1%}",
                relations or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)] + [0]
    return [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def register(sub: Any) -> None:
    """Add `segment` to the `roomlens` parser."""
    p = sub.add_parser(
        "segment",
        help="a photo's objects as facts: counts, colours, relations, a description",
        description="Segment PHOTO (or only the objects in the --box prompts) and print its "
        "description and a table of its objects: label, score, dominant colours, share of "
        "the photo and relations to the others. --json prints the API's /v1/segment body, "
        "--coco the instances as a COCO instance-segmentation document. No index needed.",
    )
    p.add_argument("photo", type=Path)
    p.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="x0,y0,x1,y1",
        help="a box prompt in pixels (repeat): one object each, in order",
    )
    p.add_argument(
        "--min-score", type=float, default=0.0, help="leave out detections scoring below S"
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the API's JSON response")
    out.add_argument("--coco", action="store_true", help="print a COCO instances document")
    p.set_defaults(func=cmd_segment)
