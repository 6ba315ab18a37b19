"""Evaluation reports: metrics.json, a markdown table, plots and sample grids (all written atomically).

A *row* is one (model, step count, guidance) evaluation, a flat-ish dict such as::

    {"model": "lcm-lora", "family": "lcm-lora", "steps": 4, "guidance": 1.0, "fid": 12.3,
     "kid_mean": 0.004, "clip_score": 0.29, "attribute_accuracy": {"color": 0.9, ..., "all": 0.7},
     "sec_per_image": 0.05}

``family`` (default: ``model``) groups rows into one line per family in the plots. Nested dicts
are flattened to ``parent.child`` columns in the table; metrics.json keeps rows exactly as given.
A row scored by :mod:`eval.scoring` also carries ``ci: {column: [lo, hi]}`` (shown as
``value ± half-width``) and ``vs_teacher: {column: {"diff", "lo", "hi"}}`` (its own table of paired
differences); the report then states, per table, the smallest difference it resolves. A
real-images *floor* row is shown under the models and stored apart from them in metrics.json.
The *protocol* dict says how the numbers were measured (feature network, number of images,
resolution, reference source, CLIP model and score convention, ...) and is printed above the
table: FID numbers from different protocols are not comparable.

Plots use matplotlib's object API on an Agg canvas (no pyplot, no global backend switch).
"""
from __future__ import annotations

import io
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from fewstep.eval.files import atomic_write  # noqa: F401  (part of this module's API)
from fewstep.eval.images import to_uint8_nchw

# Table column order: these first (when present), then any other scalar column, in first-seen order.
PREFERRED_COLUMNS = ("model", "family", "steps", "guidance", "fid", "kid_mean", "kid_std", "clip_score",
                     "attribute_accuracy.all", "attribute_accuracy.mean", "sec_per_image", "speedup")
HIGHER_IS_BETTER = {"clip_score": True, "attribute_accuracy.all": True, "attribute_accuracy.mean": True,
                    "fid": False, "fid_infinity": False, "kid_mean": False, "objects.one": True, "precision": True,
                    "recall": True, "diversity": True}
DISPLAY_NAMES = {"attribute_accuracy": "acc", "fid_infinity": "fid_inf", "objects.one": "1 object",
                 "attribute_accuracy_ignoring_count": "acc.all (any count)"}
META_KEYS = ("ci", "vs_teacher", "timesteps")  # row fields that are never table columns
# The main table of scored rows; the other interval-carrying columns go to a per-attribute table.
RESULT_COLUMNS = ("model", "steps", "guidance", "sampler", "fid", "fid_infinity", "kid_mean", "clip_score",
                  "attribute_accuracy.all", "attribute_accuracy.mean", "objects.one", "precision", "recall",
                  "diversity", "sec_per_image", "speedup")


def flatten_row(row: Mapping, prefix: str = "") -> dict:
    """Nested dicts -> ``parent.child`` keys; lists and other non-scalars are dropped."""
    out = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_row(v, key + "."))
        elif v is None or isinstance(v, (str, int, float, bool)):
            out[key] = v
    return out


def table_columns(rows: Sequence[Mapping]) -> list[str]:
    """Columns of the flattened rows: :data:`PREFERRED_COLUMNS` first, the rest in first-seen order."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(flatten_row({k: v for k, v in r.items() if k not in META_KEYS})))
    return [c for c in PREFERRED_COLUMNS if c in seen] + [c for c in seen if c not in PREFERRED_COLUMNS]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v).replace("|", "\\|")
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def _decimals(half: float) -> int:
    """Decimals that show two significant digits of an interval's half-width."""
    return max(0, 1 - math.floor(math.log10(half))) if half > 0 else 0


def _fmt_ci(value, lo, hi, signed: bool = False) -> str:
    """``value ± half-width`` rounded to the interval's precision, or ``value [lo, hi]`` when the interval
    is lopsided around the value (then ± would misstate which side it reaches); the bare value without one."""
    if value is None or lo is None or hi is None or not all(math.isfinite(v) for v in (value, lo, hi)):
        return _fmt(value)
    half = (hi - lo) / 2
    d = _decimals(half)
    sign = "+" if signed else ""
    if abs(value - (lo + hi) / 2) > 0.2 * half:
        return f"{value:{sign}.{d}f} [{lo:{sign}.{d}f}, {hi:{sign}.{d}f}]"
    return f"{value:{sign}.{d}f} ± {half:.{d}f}"


def _display(col: str) -> str:
    if col in DISPLAY_NAMES:
        return DISPLAY_NAMES[col]
    head, _, rest = col.partition(".")
    return f"{DISPLAY_NAMES.get(head, head)}.{rest}" if rest else DISPLAY_NAMES.get(col, col)


def _cell(row: Mapping, flat: Mapping, col: str) -> str:
    ci = (row.get("ci") or {}).get(col)
    return _fmt_ci(flat.get(col), *ci) if ci else _fmt(flat.get(col))


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of the rows (flattened; missing values shown as ``-``; a column with an
    interval in the row's ``ci`` shown as ``value ± half-width``)."""
    cols = list(columns) if columns is not None else table_columns(rows)
    lines = ["| " + " | ".join(_display(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        flat = flatten_row(r)
        lines.append("| " + " | ".join(_cell(r, flat, c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def difference_table(rows: Sequence[Mapping], metrics: Sequence[str]) -> str:
    """Paired differences (row - teacher) of the rows that carry ``vs_teacher``; ``*`` marks an interval
    that excludes 0 (a resolved difference)."""
    def cell(d):
        if not d:
            return "-"
        text = _fmt_ci(d["diff"], d["lo"], d["hi"], signed=True)
        resolved = all(isinstance(d[k], float) and math.isfinite(d[k]) for k in ("lo", "hi")) and \
            not d["lo"] <= 0 <= d["hi"]
        return text + (" *" if resolved else "")

    cols = [m for m in metrics if any(m in (r.get("vs_teacher") or {}) for r in rows)]
    lines = ["| model | steps | " + " | ".join("Δ " + _display(c) for c in cols) + " |",
             "|" + "|".join("---" for _ in range(len(cols) + 2)) + "|"]
    lines += [f"| {_fmt(r.get('model'))} | {_fmt(r.get('steps'))} | " +
              " | ".join(cell(r["vs_teacher"].get(c)) for c in cols) + " |" for r in rows if r.get("vs_teacher")]
    return "\n".join(lines) + "\n"


def _halves(intervals) -> list[float]:
    return [(hi - lo) / 2 for lo, hi in intervals
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)]


def resolution(rows: Sequence[Mapping]) -> dict:
    """The smallest differences a sweep resolves: per metric, the median 95 % half-width of a paired
    difference from the teacher (``paired``, with its range over rows in ``paired_range``) and of a
    single row's value (``value``)."""
    paired, spread, value = {}, {}, {}
    for m in dict.fromkeys(k for r in rows for k in (r.get("ci") or {})):
        single = _halves([r["ci"][m] for r in rows if m in (r.get("ci") or {})])
        value[m] = statistics.median(single) if single else None
        diffs = _halves([(r["vs_teacher"][m]["lo"], r["vs_teacher"][m]["hi"]) for r in rows
                         if m in (r.get("vs_teacher") or {})])
        if diffs:
            paired[m], spread[m] = statistics.median(diffs), [min(diffs), max(diffs)]
    return {"paired": paired, "paired_range": spread, "value": value}


def protocol_markdown(protocol: Mapping) -> str:
    """The protocol as a markdown bullet list (its ``warnings`` head the report instead)."""
    return "".join(f"- **{k}**: {json.dumps(v) if isinstance(v, (dict, list)) else v}\n" for k, v in protocol.items()
                   if k != "warnings")


def write_metrics_json(path: str | os.PathLike, rows: Sequence[Mapping], protocol: Mapping,
                       extra: Mapping | None = None) -> Path:
    """``{"protocol": ..., "rows": [...], **extra}`` as indented JSON (NaN written as null)."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    data = {"protocol": clean(dict(protocol)), "rows": clean(list(rows)), **clean(dict(extra or {}))}
    return atomic_write(path, json.dumps(data, indent=2) + "\n")


def read_metrics_json(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """Inverse of :func:`write_metrics_json`: ``(rows, protocol)``."""
    data = json.loads(Path(path).read_text())
    return data["rows"], data["protocol"]


# --------------------------------------------------------------------------------------------
# Plots


def _groups(rows: Sequence[Mapping]) -> dict[str, list[dict]]:
    """Rows per family (one plot line each); a family run at several guidance scales splits by scale."""
    fam: dict[str, list[dict]] = {}
    for r in rows:  # the intervals ride along for error bars
        fam.setdefault(str(r.get("family") or r.get("model")), []).append({**flatten_row(r), "ci": r.get("ci") or {}})
    out: dict[str, list[dict]] = {}
    for name, rs in fam.items():
        scales = {r.get("guidance") for r in rs}
        for r in rs:
            label = f"{name} (cfg {r.get('guidance')})" if len(scales) > 1 else name
            out.setdefault(label, []).append(r)
    return out


def _metrics_present(rows: Sequence[Mapping], metrics: Sequence[str]) -> list[str]:
    flat = [flatten_row(r) for r in rows]
    return [m for m in metrics if any(isinstance(f.get(m), (int, float)) and not isinstance(f.get(m), bool) for f in flat)]


def _save_figure(fig, path: str | os.PathLike) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write(path, buf.getvalue())


def _axis_label(metric: str) -> str:
    better = HIGHER_IS_BETTER.get(metric)
    return _display(metric) + ("" if better is None else (" (higher is better)" if better else " (lower is better)"))


def _plot_panels(rows: Sequence[Mapping], path, metrics: Sequence[str], xlabel: str, draw, style_x,
                 floor: Mapping | None = None) -> Path:
    """One panel per metric present; ``draw(ax, family_rows, metric, label)`` plots one family,
    ``style_x(ax)`` sets the x axis; the floor row, if given, is a dashed horizontal line."""
    from matplotlib.figure import Figure

    present = _metrics_present(rows, metrics) or ["fid"]
    fig = Figure(figsize=(4.4 * len(present), 3.4), layout="constrained")
    for i, metric in enumerate(present):
        ax = fig.add_subplot(1, len(present), i + 1)
        for label, rs in _groups(rows).items():
            draw(ax, rs, metric, label)
        level = flatten_row(floor).get(metric) if floor else None
        if isinstance(level, (int, float)) and math.isfinite(level):
            ax.axhline(level, color="gray", linestyle="--", linewidth=1, label=str(floor.get("model")))
        style_x(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_axis_label(metric))
        ax.grid(alpha=0.3)
        if i == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save_figure(fig, path)


def _error_bars(rs: Sequence[Mapping], metric: str, pts: Sequence[tuple]) -> list[list[float]] | None:
    """``[[below...], [above...]]`` of each point's interval (None when no point has one)."""
    if not any(metric in r["ci"] for r in rs):
        return None
    bars = [[], []]
    for p in pts:
        lo, hi = p[-1].get(metric) or (p[1], p[1])
        bars[0].append(max(0.0, p[1] - lo) if lo is not None else 0.0)
        bars[1].append(max(0.0, hi - p[1]) if hi is not None else 0.0)
    return bars


def plot_quality_vs_steps(rows: Sequence[Mapping], path: str | os.PathLike,
                          metrics: Sequence[str] = ("fid", "clip_score", "attribute_accuracy.all"),
                          floor: Mapping | None = None) -> Path:
    """One panel per metric, quality against sampling steps (log scale), one line per model family,
    with 95 % error bars where the rows carry intervals."""
    def draw(ax, rs, metric, label):
        pts = sorted(((r["steps"], r[metric], r["ci"]) for r in rs
                      if isinstance(r.get(metric), (int, float)) and isinstance(r.get("steps"), (int, float))),
                     key=lambda p: p[0])
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=_error_bars(rs, metric, pts), marker="o",
                        capsize=3, label=label)

    def style_x(ax):
        ax.set_xscale("log", base=2)
        ticks = sorted({r["steps"] for r in rows if isinstance(r.get("steps"), (int, float))})
        ax.set_xticks(ticks, [str(t) for t in ticks])

    return _plot_panels(rows, path, metrics, "sampling steps", draw, style_x, floor)


def plot_quality_vs_latency(rows: Sequence[Mapping], path: str | os.PathLike,
                            metrics: Sequence[str] = ("fid", "clip_score", "attribute_accuracy.all"),
                            floor: Mapping | None = None) -> Path:
    """One panel per metric, quality against seconds per image (log scale); points labelled by steps."""
    def draw(ax, rs, metric, label):
        pts = sorted((r["sec_per_image"], r[metric], r.get("steps")) for r in rs
                     if isinstance(r.get(metric), (int, float)) and isinstance(r.get("sec_per_image"), (int, float)))
        if not pts:
            return
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        for x, y, steps in pts:
            ax.annotate(str(steps), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)

    return _plot_panels(rows, path, metrics, "seconds per image", draw, lambda ax: ax.set_xscale("log"), floor)


def _scored_sections(rows: Sequence[Mapping], floor: Mapping | None, protocol: Mapping) -> list[str]:
    """Markdown for rows with intervals: results, paired differences, per-attribute details, resolution."""
    shown = list(rows) + ([floor] if floor else [])
    present = set(table_columns(shown)) | {c for r in shown for c in (r.get("ci") or {})}
    main = [c for c in RESULT_COLUMNS if c in present]
    extra = ["model", "steps"] + [c for c in dict.fromkeys(k for r in shown for k in (r.get("ci") or {}))
                                  if c not in RESULT_COLUMNS]
    res = resolution(rows)
    n, b = protocol.get("num_images", "?"), protocol.get("bootstrap_resamples", "?")
    out = [f"\n## Results\n\n{n} images per row; value ± half-width of its 95 % bootstrap interval, or value [low, "
           f"high] when the interval is lopsided ({b} resamples of the image positions, the same in every row; exact "
           "bounds in metrics.json)."
           + (f" The last row, {floor.get('model')}, is real held-out images scored like a model: the floor "
              "of each metric at this number of images." if floor else "") + "\n", markdown_table(shown, main)]
    metrics = [c for c in main if c in res["value"]]
    if any(r.get("vs_teacher") for r in shown):
        base = protocol.get("paired_differences", "row - teacher")
        out += [f"\n## Paired differences\n\n{base}; `*`: the 95 % interval excludes 0 (a resolved "
                "difference); without `*` the rows are level within what this sweep can tell.\n",
                difference_table(shown, metrics)]
    if res["paired"]:
        parts = [f"{_display(m)} {_fmt(res['paired'][m])} ({_fmt(res['paired_range'][m][0])} to "
                 f"{_fmt(res['paired_range'][m][1])})" for m in metrics if m in res["paired"]]
        what = "paired difference from the teacher; in parentheses its range over the rows"
    else:
        parts = [f"{_display(m)} {_fmt(res['value'][m] * math.sqrt(2))}" for m in metrics
                 if res["value"].get(m) is not None]
        what = "difference of two rows, from single-row intervals x sqrt 2"
    out.append(f"\nSmallest difference this sweep resolves at {n} images (median 95 % half-width of a {what}): "
               + ", ".join(parts) + ".\n")
    if len(extra) > 2:
        out += ["\n## Per attribute and object count\n", markdown_table(shown, extra)]
    return out


def write_report(out_dir: str | os.PathLike, rows: Sequence[Mapping], protocol: Mapping, title: str = "fewstep evaluation",
                 *, floor: Mapping | None = None) -> dict:
    """Write ``metrics.json``, ``report.md``, ``quality_vs_steps.png`` and ``quality_vs_latency.png``.

    Args:
        out_dir: e.g. ``runs/<name>/eval``.
        rows: evaluation rows (module doc).
        protocol: how the numbers were measured; stated above the table. Its ``warnings`` (a list of
            strings) are repeated at the top of the report.
        title: report heading.
        floor: the real-images row, if any: shown under the models, stored as ``"floor"``.

    Returns:
        ``{"metrics_json", "report_md", "quality_vs_steps", "quality_vs_latency"}`` -> Path
        (a plot is skipped when no row has the quantities it needs).
    """
    out = Path(out_dir)
    scored = any(r.get("ci") for r in rows)
    extra = {"floor": floor} if floor else {}
    if scored:
        extra["resolution"] = resolution(rows)
    paths = {"metrics_json": write_metrics_json(out / "metrics.json", rows, protocol, extra)}
    has_steps = any("steps" in r for r in rows)
    has_latency = any(isinstance(r.get("sec_per_image"), (int, float)) for r in rows)
    if has_steps:
        paths["quality_vs_steps"] = plot_quality_vs_steps(rows, out / "quality_vs_steps.png", floor=floor)
    if has_latency:
        paths["quality_vs_latency"] = plot_quality_vs_latency(rows, out / "quality_vs_latency.png", floor=floor)
    md = [f"# {title}\n"] + [f"> **Warning:** {w}\n" for w in protocol.get("warnings") or []]
    md += ["## Protocol\n", protocol_markdown(protocol)]
    md += _scored_sections(rows, floor, protocol) if scored else ["\n## Results\n", markdown_table(rows)]
    md += [f"\n![{k}]({p.name})\n" for k, p in paths.items() if p.suffix == ".png"]
    paths["report_md"] = atomic_write(out / "report.md", "\n".join(md))
    return paths


# --------------------------------------------------------------------------------------------
# Sample grids


def sample_grid(rows: Sequence[tuple[str, object]], *, top: str | None = None, scale: int | None = None,
                pad: int = 2, background: tuple[int, int, int] = (255, 255, 255)):
    """One row of samples per model / step count, with its label drawn on the left.

    Args:
        rows: ``(label, images)`` in display order; ``images`` is a batch tensor / array or a list of
            images (see :func:`eval.images.to_uint8_nchw`). Use the same seeds in every row, so
            columns compare like with like.
        top: label of a row to move to the top (the teacher, as the reference).
        scale: integer nearest-neighbour upscaling; default makes images at least 96 px tall.
        pad: pixels between cells.
        background: RGB of padding and empty cells.

    Returns:
        A PIL RGB image.
    """
    import torch
    from PIL import Image, ImageDraw, ImageFont

    rows = list(rows)
    if not rows:
        raise ValueError("sample_grid needs at least one row")
    if top is not None:
        rows.sort(key=lambda r: r[0] != top)  # stable: other rows keep their order
    batches = []
    for label, imgs in rows:
        parts = [to_uint8_nchw(imgs)] if hasattr(imgs, "shape") else [to_uint8_nchw(x) for x in imgs]
        batches.append((str(label), torch.cat(parts)))
    h, w = batches[0][1].shape[-2:]
    if any(b.shape[-2:] != (h, w) for _, b in batches):
        raise ValueError("all samples in a grid must have one size")
    s = scale or max(1, math.ceil(96 / h))
    ch, cw = h * s, w * s
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(probe.textbbox((0, 0), label, font=font)[2] for label, _ in batches) + 4 * pad + 4
    ncol = max(b.shape[0] for _, b in batches)
    grid = Image.new("RGB", (label_w + ncol * (cw + pad) + pad, len(batches) * (ch + pad) + pad), background)
    draw = ImageDraw.Draw(grid)
    for i, (label, b) in enumerate(batches):
        y = pad + i * (ch + pad)
        box = draw.textbbox((0, 0), label, font=font)
        draw.text((2 * pad, y + (ch - (box[3] - box[1])) // 2), label, fill=(0, 0, 0), font=font)
        for j, im in enumerate(b):
            tile = Image.fromarray(im.permute(1, 2, 0).numpy()).resize((cw, ch), Image.NEAREST)
            grid.paste(tile, (label_w + j * (cw + pad), y))
    return grid


def save_sample_grid(rows: Sequence[tuple[str, object]], path: str | os.PathLike, **kwargs) -> Path:
    """:func:`sample_grid` saved as a PNG, atomically."""
    buf = io.BytesIO()
    sample_grid(rows, **kwargs).save(buf, format="PNG")
    return atomic_write(path, buf.getvalue())
