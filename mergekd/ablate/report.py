"""Ablation reports: a rich table on the console, ``results.csv``, ``results.md``, ``results.json`` and
``results.png`` (held-out BPB per cell as bars, the CE-only baseline and each teacher as horizontal lines).

Why these four files: the CSV is for pandas and spreadsheets (full-precision numbers, one row per cell), the
markdown table pastes into an issue or a README, the JSON keeps everything (teacher references included) for
scripts, and the plot answers the question an ablation asks — which cells beat the CE-only baseline, and how far
they are from the teachers — at a glance. All are written atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .config import TEACHER_ONLY, axes_of
from ..io import write_atomic
from .plan import Plan


def _baseline_key(values: dict) -> str:
    """Non-teacher settings of a cell: a teacher cell is compared with the CE-only cell that shares them."""
    return json.dumps({k: v for k, v in values.items() if k != "teachers" and k not in TEACHER_ONLY},
                      sort_keys=True, default=str)


def table_rows(plan: Plan, rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Column names and one dict of raw values per finished cell (in grid order)."""
    by_id = {c.id: c for c in plan.cells}
    axes = [a for a in axes_of(plan.cells) if a != "teachers"]
    baselines = {_baseline_key(by_id[r["id"]].values): r["bpb"] for r in rows if by_id[r["id"]].ce_only}
    sampled = any(r.get("sample_bpb") is not None for r in rows)
    columns = ["cell", "teachers", *axes, "bpb", "delta_vs_ce", *(["sample_bpb"] if sampled else []), "bytes",
               "final_loss", "steps", "seconds", "teacher_specs"]
    out = []
    for r in rows:
        cell = by_id[r["id"]]
        base = baselines.get(_baseline_key(cell.values))
        out.append({"cell": cell.id, "teachers": cell.shown("teachers"), **{a: cell.shown(a) for a in axes},
                    "bpb": r["bpb"], "delta_vs_ce": None if base is None or cell.ce_only else r["bpb"] - base,
                    "bytes": r["bytes"], "final_loss": r.get("final_loss"), "steps": r["steps"],
                    "seconds": r["seconds"], "teacher_specs": ",".join(cell.teachers), "_ce_only": cell.ce_only,
                    "sample_bpb": r.get("sample_bpb")})
    return columns, out


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if digits < 0 else f"{value:.{digits}f}"
    return str(value)


def to_csv(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row[k] is None else repr(row[k]) if isinstance(row[k], float) else row[k])
                         for k in columns})
    return buf.getvalue()


def _display(row: dict, column: str) -> str:
    value = row[column]
    if column == "delta_vs_ce":
        return "-" if value is None else f"{value:+.4f}"
    if column in ("bpb", "final_loss", "sample_bpb"):
        return _num(value, 4)
    if column == "seconds":
        return f"{value:.0f}"
    return "-" if value is None else str(value)


def to_markdown(columns: list[str], rows: list[dict], teachers: list[dict]) -> str:
    shown = [c for c in columns if c != "teacher_specs"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    lines += ["| " + " | ".join(_display(r, c) for c in shown) + " |" for r in rows]
    if teachers:
        lines += ["", "Teachers on the same held-out text (their own tokenizers, token-level BPB):", "",
                  "| teacher | spec | eval data | bpb | bytes |", "|---|---|---|---|---|"]
        lines += [f"| {t['teacher']} | `{t['spec']}` | {Path(t['eval_data']).name} | {t['bpb']:.4f} | {t['bytes']} |"
                  for t in teachers]
    return "\n".join(lines) + "\n"


def to_png(rows: list[dict], teachers: list[dict], title: str) -> bytes:
    """Bars per cell (CE-only grey), a dashed line per CE-only baseline, a dotted line per teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 3.0), 5.0))
    try:
        names = [r["cell"] for r in rows]
        values = [r["bpb"] for r in rows]
        palette = plt.get_cmap("tab10")
        subsets = list(dict.fromkeys(r["teachers"] for r in rows if not r["_ce_only"]))
        colors = ["#9e9e9e" if r["_ce_only"] else palette(subsets.index(r["teachers"]) % 10) for r in rows]
        bars = ax.bar(range(len(rows)), values, color=colors)
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
        for r in rows:
            if r["_ce_only"]:
                ax.axhline(r["bpb"], color="black", linestyle="--", linewidth=1.2,
                           label=f"CE-only baseline {r['cell']} ({r['bpb']:.3f})")
        styles = ["dotted", "dashdot", (0, (5, 2, 1, 2)), (0, (1, 1))]
        evals = list(dict.fromkeys(Path(t["eval_data"]).name for t in teachers))
        for j, t in enumerate(teachers):
            where = f" on {Path(t['eval_data']).name}" if len(evals) > 1 else ""
            ax.axhline(t["bpb"], color=palette((j + 3) % 10), linestyle=styles[j % len(styles)], linewidth=1.5,
                       label=f"teacher {t['teacher']}{where} ({t['bpb']:.3f})")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("held-out bits per byte (lower is better)")
        ax.set_title(title, fontsize=10)
        # cells of an ablation often differ by a few hundredths of a bit: zoom onto the values (the numbers on
        # the bars and the note on the axis keep the zoom honest)
        every = values + [t["bpb"] for t in teachers] or [1.0]
        lo, hi = min(every), max(every)
        pad = max(0.08 * (hi - lo), 0.02 * hi)
        bottom = max(0.0, lo - 2 * pad)
        ax.set_ylim(bottom, hi + 2 * pad)
        if bottom > 0:
            ax.set_ylabel(f"held-out bits per byte (lower is better; axis from {bottom:.2f})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)


def write_reports(plan: Plan, rows: list[dict], teachers: list[dict], *, png: bool = True) -> dict[str, Path]:
    columns, table = table_rows(plan, rows)
    files = {"csv": plan.out / "results.csv", "md": plan.out / "results.md", "json": plan.out / "results.json"}
    write_atomic(files["csv"], to_csv(columns, table))
    write_atomic(files["md"], to_markdown(columns, table, teachers))
    payload = {"cells": rows, "table": [{k: v for k, v in r.items() if not k.startswith("_")} for r in table],
               "teachers": teachers,
               "total_cells": len(plan.cells)}
    write_atomic(files["json"], json.dumps(payload, indent=1, default=str))
    if png:
        files["png"] = plan.out / "results.png"
        write_atomic(files["png"], to_png(table, teachers, f"mergekd ablate: {plan.out.name} "
                                                                f"({len(rows)} cells)"))
    return files


def print_table(plan: Plan, rows: list[dict], teachers: list[dict], console) -> None:
    from rich.table import Table

    columns, table = table_rows(plan, rows)
    # the cell id already spells its axis values; the console keeps the numbers readable at 80 columns
    # (results.csv / results.md have one column per axis)
    shown = ["cell", "bpb", "delta_vs_ce", *(["sample_bpb"] if "sample_bpb" in columns else []), "final_loss",
             "steps", "seconds"]
    status = {r["id"]: r.get("status", "") for r in rows}
    out = Table(title="held-out bits per byte (lower is better)")
    out.add_column("cell", overflow="fold", ratio=1, min_width=24)  # never squeezed away
    for column in [*shown[1:], "status"]:
        out.add_column(column, no_wrap=True)
    best = min((r["bpb"] for r in table), default=None)
    for r in table:
        cells = [_display(r, c) for c in shown]
        if r["bpb"] == best:
            cells[shown.index("bpb")] = f"[bold green]{cells[shown.index('bpb')]}[/]"
        out.add_row(*cells, status.get(r["cell"], ""))
    console.print(out)
    if teachers:
        ref = Table("teacher", "spec", "eval data", "bpb", title="teacher reference (own tokenizer, token NLL)")
        for t in teachers:
            ref.add_row(t["teacher"], t["spec"], Path(t["eval_data"]).name, f"{t['bpb']:.4f}")
        console.print(ref)


def print_plan(plan: Plan, console) -> None:
    """``--dry-run``: the cells (id, axis values, steps), the caches that would be captured, nothing run."""
    from rich.table import Table

    axes = axes_of(plan.cells)
    table = Table("#", title=f"{len(plan.cells)} cells (dry run; each runs in {plan.out / 'cells'}/<cell>)")
    table.add_column("cell", overflow="fold")
    for axis in axes:
        table.add_column(axis, overflow="fold")
    table.add_column("steps")
    for i, cell in enumerate(plan.cells, 1):
        table.add_row(str(i), cell.id, *(cell.shown(a) for a in axes), str(cell.config.steps))
    console.print(table)
    for slug, group in plan.groups.items():
        console.print(f"teacher cache {group['path']}: {', '.join(group['specs'])} over {group['data']} "
                      f"(seq_bytes {group['seq_bytes']}, teacher window {group['max_length']})")
    if not plan.groups and any(not c.ce_only for c in plan.cells):
        console.print("cache: off — every teacher cell runs its teachers online")
    elif plan.online:
        console.print(f"teachers online (settings that cannot use a cache): {', '.join(plan.online)}")
    if plan.config.teacher_eval and plan.teachers:
        console.print(f"teacher reference BPB: {', '.join(plan.teachers)} on "
                      f"{', '.join(str(p) for p in plan.eval_files)}")
