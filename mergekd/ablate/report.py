"""Ablation reports: a rich table on the console, ``results.csv``, ``results.md``, ``results.json`` and
``results.png`` (held-out BPB per cell as bars, the CE-only baseline and each teacher as horizontal lines).

Why these four files: the CSV is for pandas and spreadsheets (full-precision numbers, one row per cell), the
markdown table pastes into an issue or a README, the JSON keeps everything (teacher references included) for
scripts, and the plot answers the question an ablation asks — which cells beat the CE-only baseline, and how far
they are from the teachers — at a glance. All are written atomically, so a reader never sees half a file.

Seeds: the reports have one row per cell whatever the number of seeds. With several seeds (``seeds:``) a row gives
the mean held-out BPB over the cell's finished seeds, its sample standard deviation and 95% t-interval, and the
same three for the paired difference to the CE-only cell of the same seed (:mod:`mergekd.ablate.stats`); the
plot draws the intervals as error bars. With one seed the table is the single-run table: values, no interval.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from collections import Counter

from .config import TEACHER_ONLY, axes_of
from ..io import write_atomic
from .plan import Plan
from .stats import paired_differences, summarize

# the columns a grid with several seeds adds (see table_rows)
SEED_COLUMNS = ("seeds", "n_seeds", "bpb", "bpb_sd", "bpb_ci95_lo", "bpb_ci95_hi", "delta_vs_ce", "delta_sd",
                "delta_ci95_lo", "delta_ci95_hi")


def _baseline_key(values: dict) -> str:
    """Non-teacher settings of a cell: a teacher cell is compared with the CE-only cell that shares them."""
    return json.dumps({k: v for k, v in values.items() if k != "teachers" and k not in TEACHER_ONLY},
                      sort_keys=True, default=str)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return summarize(values)["mean"] if values else None


def table_rows(plan: Plan, rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Column names and one dict of raw values per cell with a finished run (in grid order).

    ``rows`` are run records (``id``, ``seed``, ``bpb``, ...). Per cell: ``bpb`` is the mean over its seeds
    (the value itself with one), ``delta_vs_ce`` the mean over seeds of ``bpb − CE-only bpb of the same seed``
    (seeds both have). With several seeds in the plan the columns add ``seeds``, ``n_seeds``, the sample sd and
    the 95% t-interval of both (None where a cell has fewer than two values), and ``bpb_per_seed``."""
    by_id = {c.id: c for c in plan.cells}
    axes = [a for a in axes_of(plan.cells) if a != "teachers"]
    order = {s: i for i, s in enumerate(plan.seeds)}
    runs: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: order.get(r.get("seed"), len(order))):
        runs.setdefault(r["id"], {})[r.get("seed")] = r
    bpb = {cell_id: {s: r["bpb"] for s, r in per.items()} for cell_id, per in runs.items()}
    baselines = {_baseline_key(by_id[i].values): bpb[i] for i in runs if by_id[i].ce_only}
    sampled = any(r.get("sample_bpb") is not None for r in rows)
    multi = plan.nested
    stats = list(SEED_COLUMNS) if multi else ["bpb", "delta_vs_ce"]
    columns = ["cell", "teachers", *axes, *stats, *(["sample_bpb"] if sampled else []), "bytes",
               "final_loss", "steps", "seconds", *(["bpb_per_seed"] if multi else []), "teacher_specs"]
    out = []
    for cell in plan.cells:
        per = runs.get(cell.id)
        if not per:
            continue
        first = next(iter(per.values()))
        base = baselines.get(_baseline_key(cell.values))
        own = summarize(bpb[cell.id].values())
        delta = summarize(paired_differences(bpb[cell.id], base).values() if base and not cell.ce_only else [])
        row = {"cell": cell.id, "teachers": cell.shown("teachers"), **{a: cell.shown(a) for a in axes},
               "bpb": own["mean"], "delta_vs_ce": delta["mean"],
               "bytes": first["bytes"], "final_loss": _mean(r.get("final_loss") for r in per.values()),
               "steps": first["steps"], "seconds": round(sum(r["seconds"] for r in per.values()), 1),
               "teacher_specs": ",".join(cell.teachers), "_ce_only": cell.ce_only,
               "sample_bpb": _mean(r.get("sample_bpb") for r in per.values()),
               "_bpb_half": own["half"], "_delta_half": delta["half"],
               "_status": _statuses([r.get("status", "") for r in per.values()])}
        if multi:
            row.update({"seeds": " ".join(str(s) for s in per), "n_seeds": own["n"], "bpb_sd": own["sd"],
                        "bpb_ci95_lo": own["lo"], "bpb_ci95_hi": own["hi"], "delta_sd": delta["sd"],
                        "delta_ci95_lo": delta["lo"], "delta_ci95_hi": delta["hi"],
                        "bpb_per_seed": " ".join(repr(v) for v in bpb[cell.id].values())})
        out.append(row)
    return columns, out


def _statuses(statuses: list[str]) -> str:
    """One cell's run statuses for the console: ``skipped`` when all agree, else ``ran 1, skipped 2``."""
    counts = Counter(s for s in statuses if s)
    if len(counts) <= 1:
        return next(iter(counts), "")
    return ", ".join(f"{s} {n}" for s, n in counts.items())


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
    if column in ("delta_vs_ce", "delta_ci95_lo", "delta_ci95_hi"):
        return "-" if value is None else f"{value:+.4f}"
    if column in ("bpb", "final_loss", "sample_bpb", "bpb_sd", "bpb_ci95_lo", "bpb_ci95_hi", "delta_sd"):
        return _num(value, 4)
    if column == "seconds":
        return f"{value:.0f}"
    return "-" if value is None else str(value)


def _with_half(row: dict, column: str) -> str:
    """``mean ± half-width`` of the 95% interval where there is one (several seeds), else the value alone."""
    text = _display(row, column)
    half = row.get("_bpb_half" if column == "bpb" else "_delta_half")
    return text if half is None else f"{text} ± {half:.4f}"


def to_markdown(columns: list[str], rows: list[dict], teachers: list[dict]) -> str:
    shown = [c for c in columns if c not in ("teacher_specs", "bpb_per_seed")]
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    lines += ["| " + " | ".join(_display(r, c) for c in shown) + " |" for r in rows]
    if "bpb_sd" in columns:
        lines += ["", ("bpb: mean held-out BPB over the cell's seeds; sd: sample standard deviation; ci95: mean ± "
                       "t(0.975, n-1)·sd/√n; delta: per seed, cell BPB − CE-only BPB of the same seed, then the same "
                       "statistics (no interval with fewer than two seeds).")]
    if teachers:
        lines += ["", "Teachers on the same held-out text (their own tokenizers, token-level BPB):", "",
                  "| teacher | spec | eval data | bpb | bytes |", "|---|---|---|---|---|"]
        lines += [f"| {t['teacher']} | `{t['spec']}` | {Path(t['eval_data']).name} | {t['bpb']:.4f} | {t['bytes']} |"
                  for t in teachers]
    return "\n".join(lines) + "\n"


def to_png(rows: list[dict], teachers: list[dict], title: str) -> bytes:
    """Bars per cell (CE-only grey), a dashed line per CE-only baseline, a dotted line per teacher; with
    several seeds the bars are means and carry their 95% interval as error bars."""
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
        lows = [r["bpb_ci95_lo"] if r.get("bpb_ci95_lo") is not None else v for r, v in zip(rows, values)]
        highs = [r["bpb_ci95_hi"] if r.get("bpb_ci95_hi") is not None else v for r, v in zip(rows, values)]
        intervals = any(r.get("bpb_ci95_lo") is not None for r in rows)
        yerr = [[v - lo for v, lo in zip(values, lows)], [hi - v for v, hi in zip(values, highs)]]
        bars = ax.bar(range(len(rows)), values, color=colors, yerr=yerr if intervals else None, capsize=4,
                      error_kw={"elinewidth": 1.0, "ecolor": "black"})
        for bar, value, top, r in zip(bars, values, highs, rows):
            text = f"{value:.3f}"
            if r.get("_delta_half") is not None:  # the paired interval: the one that says "beats CE-only"
                text += f"\nΔ {r['delta_vs_ce']:+.3f} ± {r['_delta_half']:.3f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, top), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
        if intervals:
            n = max(r.get("n_seeds") or 1 for r in rows)
            ax.plot([], [], color="black", marker="|", linestyle="none",
                    label=f"95% t-interval over seeds (up to {n})")
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
        every = values + lows + highs + [t["bpb"] for t in teachers] or [1.0]
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
               "teachers": teachers, "seeds": plan.seeds,
               "total_cells": len(plan.cells), "total_runs": len(plan.cells) * len(plan.seeds)}
    write_atomic(files["json"], json.dumps(payload, indent=1, default=str))
    if png:
        files["png"] = plan.out / "results.png"
        seeds = f" × {len(plan.seeds)} seeds, mean and 95% interval" if plan.nested else ""
        write_atomic(files["png"], to_png(table, teachers, f"mergekd ablate: {plan.out.name} "
                                                                f"({len(table)} cells{seeds})"))
    return files


def print_table(plan: Plan, rows: list[dict], teachers: list[dict], console) -> None:
    from rich.table import Table

    columns, table = table_rows(plan, rows)
    # the cell id already spells its axis values; the console keeps the numbers readable at 80 columns
    # (results.csv / results.md have one column per axis)
    shown = ["cell", *(["n_seeds"] if plan.nested else []), "bpb", "delta_vs_ce",
             *(["sample_bpb"] if "sample_bpb" in columns else []), "final_loss", "steps", "seconds"]
    title = "held-out bits per byte (lower is better)"
    if plan.nested:
        title += f"; mean ± 95% interval over seeds {', '.join(map(str, plan.seeds))}"
    out = Table(title=title)
    out.add_column("cell", overflow="fold", ratio=1, min_width=24)  # never squeezed away
    for column in [*shown[1:], "status"]:
        out.add_column(column, no_wrap=True)
    best = min((r["bpb"] for r in table), default=None)
    for r in table:
        cells = [_with_half(r, c) if c in ("bpb", "delta_vs_ce") else _display(r, c) for c in shown]
        if r["bpb"] == best:
            cells[shown.index("bpb")] = f"[bold green]{cells[shown.index('bpb')]}[/]"
        out.add_row(*cells, r["_status"])
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
    where = f"{plan.out / 'cells'}/<cell>" + ("/seed-<s>" if plan.nested else "")
    runs = (f"; seeds {', '.join(map(str, plan.seeds))}: {len(plan.cells) * len(plan.seeds)} runs"
            if plan.nested else "")
    table = Table("#", title=f"{len(plan.cells)} cells (dry run{runs}; each runs in {where})")
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
