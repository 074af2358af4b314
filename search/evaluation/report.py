"""The eval report: a terminal table, JSON, Markdown and a PNG plot of recall against K."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from search.evaluation.closeups import CloseupMetrics
from search.evaluation.metrics import MethodMetrics

HEADLINE_GROUPS = ("furniture", "storage", "all")


def ordered_groups(metrics: dict[str, MethodMetrics]) -> list[str]:
    first = next(iter(metrics.values()))
    rest = sorted(g for g in first.groups if g not in HEADLINE_GROUPS)
    return [g for g in HEADLINE_GROUPS if g in first.groups] + rest


def table(metrics: dict[str, MethodMetrics], groups: Sequence[str] | None = None) -> str:
    """Rows: method × group; columns: R@1, R@5, R@10, budget recalls, items."""
    groups = list(groups or ordered_groups(metrics))
    first = next(iter(metrics.values()))
    any_group = first.groups[groups[0]]
    ks, budgets = list(any_group.recall_at), list(any_group.recall_budget)
    head = ["method", "group", "items"] + [f"R@{k}" for k in ks] + [f"B{b}" for b in budgets]
    rows = [head]
    for name, m in metrics.items():
        for g in groups:
            gm = m.groups[g]
            rows.append(
                [name, g, str(gm.items)]
                + [f"{gm.recall_at[k]:.3f}" for k in ks]
                + [f"{gm.recall_budget[b]:.3f}" for b in budgets]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def closeup_rows(closeups: dict[str, CloseupMetrics]) -> list[list[str]]:
    """Header and one row per method of the close-up check."""
    first = next(iter(closeups.values()))
    ks = list(first.recall_at)
    rows = [["close-ups: method", "crops"] + [f"R@{k}" for k in ks] + ["groups/crop"]]
    for name, m in closeups.items():
        rows.append(
            [name, str(m.crops)]
            + [f"{m.recall_at[k]:.3f}" for k in ks]
            + [f"{m.groups_per_crop:.1f}"]
        )
    return rows


def closeup_table(closeups: dict[str, CloseupMetrics]) -> str:
    """The close-up check as a terminal table."""
    rows = closeup_rows(closeups)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_lines(metrics: dict[str, MethodMetrics]) -> list[str]:
    out = []
    for name, m in metrics.items():
        per_k = ", ".join(f"K={k}: {v:.1f}" for k, v in m.products_per_photo.items())
        out.append(
            f"{name}: {m.instances_per_photo:.1f} instances/photo, "
            f"top-1 in photo {m.top1_in_photo:.3f}, distinct products/photo {per_k}"
        )
    return out


def gain_line(metrics: dict[str, MethodMetrics], baseline: str, budget: int = 20) -> str | None:
    """How much the first method beats `baseline` on furniture at budget `budget`."""
    if baseline not in metrics or len(metrics) < 2:
        return None
    main_name, main = next(iter(metrics.items()))
    a = main.groups["furniture"].recall_budget[budget]
    b = metrics[baseline].groups["furniture"].recall_budget[budget]
    ratio = f"{a / b:.1f}x" if b > 0 else "n/a"
    return (
        f"segmentation vs {baseline}: furniture budget-{budget} recall {a:.3f} vs {b:.3f} "
        f"({a - b:+.3f}, {ratio})"
    )


def to_json(
    metrics: dict[str, MethodMetrics],
    meta: dict[str, object],
    closeups: dict[str, CloseupMetrics] | None = None,
) -> str:
    body: dict[str, object] = {"meta": meta, "methods": {n: asdict(m) for n, m in metrics.items()}}
    if closeups:
        body["closeups"] = {n: asdict(m) for n, m in closeups.items()}
    return json.dumps(body, indent=2)


def to_markdown(
    metrics: dict[str, MethodMetrics],
    meta: dict[str, object],
    closeups: dict[str, CloseupMetrics] | None = None,
) -> str:
    groups = ordered_groups(metrics)
    first = next(iter(metrics.values())).groups[groups[0]]
    ks, budgets = list(first.recall_at), list(first.recall_budget)
    lines = ["# roomlens eval", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += [""] + [f"- {s}" for s in summary_lines(metrics)]
    lines += [""]
    head = ["method", "group", "items"] + [f"R@{k}" for k in ks] + [f"budget {b}" for b in budgets]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name, m in metrics.items():
        for g in groups:
            gm = m.groups[g]
            cells = [name, g, str(gm.items)]
            cells += [f"{gm.recall_at[k]:.3f}" for k in ks]
            cells += [f"{gm.recall_budget[b]:.3f}" for b in budgets]
            lines.append("| " + " | ".join(cells) + " |")
    if closeups:
        rows = closeup_rows(closeups)
        lines += ["", "## Close-ups", ""]
        lines.append("| " + " | ".join(rows[0]) + " |")
        lines.append("|" + "---|" * len(rows[0]))
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def plot(metrics: dict[str, MethodMetrics], path: Path, group: str = "furniture") -> None:
    """Recall of `group` against K (per instance) for each method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, m in metrics.items():
        gm = m.groups[group]
        ks = list(gm.recall_at)
        ax.plot(ks, [gm.recall_at[k] for k in ks], marker="o", label=name)
    ax.set_xlabel("K (products per instance)")
    ax.set_ylabel(f"item recall ({group})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
