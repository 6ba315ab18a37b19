"""Paired comparison of rows from several evaluation reports, as if they had been one sweep.

Students are often evaluated one report at a time (``fewstep eval --run RUN --teacher-steps ''``)
and compared with a teacher sweep made earlier. Every report keeps its rows' per-image
measurements (``per_image/*.npz``); when the reports share the protocol that makes rows paired
(the same prompts, seeds, number of images, reference and feature network), their rows are scored
again together here, with the one bootstrap draw of that size, so each row gets its paired
difference from the chosen teacher row. Nothing is generated again.

    from fewstep.pipelines.eval_compare import compare_reports
    compare_reports(["bench/results/teacher-sweep", "bench/results/consistency/lcm-lora"],
                    "bench/results/consistency/paired", baseline=("teacher", 50))
"""
from __future__ import annotations

import os
from pathlib import Path

from fewstep.pipelines.errors import EvalError

# Protocol fields that must agree for rows of different reports to be paired.
PAIRING_KEYS = ("num_images", "prompts_sha256", "seeds", "reference", "features", "bootstrap_resamples", "diversity")
# Row fields that are measured, not scored: kept as the report wrote them.
KEPT_FIELDS = ("model", "family", "steps", "guidance", "scheduler", "timestep_spacing", "timesteps", "sampler",
               "sec_per_image", "latency_batch_size", "num_images")


def _read(folder: Path) -> tuple[list[dict], dict, dict | None]:
    import json

    path = folder / "metrics.json"
    if not path.is_file():
        raise EvalError(f"{folder}: no metrics.json (not an evaluation report)")
    data = json.loads(path.read_text())
    return data["rows"], data["protocol"], data.get("floor")


def _samples(folder: Path, row: dict):
    from fewstep.eval.scoring import RowSamples
    from fewstep.pipelines.evaluate import per_image_file

    path = per_image_file(folder / "per_image", row)
    if not path.is_file():
        raise EvalError(f"{folder}: {path.name} missing (reports written before per-image files cannot be paired; "
                        "re-run fewstep eval)")
    return RowSamples.load(path)


def compare_reports(folders: list[str | os.PathLike], out_dir: str | os.PathLike, *,
                    baseline: tuple[str, int] | None = None, cache_dir: str | None = None) -> dict[str, Path]:
    """Re-score the rows of ``folders`` together and write one report (metrics.json, report.md, plots).

    Args:
        folders: report folders written by ``fewstep eval`` with one protocol (:data:`PAIRING_KEYS`).
        out_dir: where the combined report goes.
        baseline: ``(model, steps)`` of the row every other row is compared with; default the first
            row of a teacher family at its largest step count.
        cache_dir: reference-statistics cache the reports used (default: the sweep's default).

    Returns:
        The paths :func:`eval.report.write_report` wrote.
    """
    from fewstep.eval.metrics import FeatureStats, cache_path
    from fewstep.eval.report import write_report
    from fewstep.eval.scoring import Bootstrap, Reference
    from fewstep.pipelines.evaluate import reference_cache_dir, score_rows

    if not folders:
        raise EvalError("nothing to compare")
    rows, samples, floor, floor_samples, first = [], [], None, None, None
    seen = set()
    for folder in map(Path, folders):
        report_rows, protocol, report_floor = _read(folder)
        if first is None:
            first = protocol
        bad = [k for k in PAIRING_KEYS if protocol.get(k) != first.get(k)]
        if bad:
            raise EvalError(f"{folder}: protocol differs from {folders[0]} in {', '.join(bad)}; its rows are not paired")
        for row in report_rows:
            if (row["model"], row["steps"]) not in seen:
                seen.add((row["model"], row["steps"]))
                rows.append({k: row[k] for k in KEPT_FIELDS if k in row})
                samples.append(_samples(folder, row))
        if report_floor and floor is None:
            floor = {k: report_floor[k] for k in KEPT_FIELDS if k in report_floor}
            floor_samples = _samples(folder, report_floor)
    if baseline is None:
        teachers = [r for r in rows if str(r.get("family", "")).startswith("teacher")]
        base = max(teachers, key=lambda r: r["steps"]) if teachers else None
    else:
        base = next((r for r in rows if (r["model"], r["steps"]) == tuple(baseline)), None)
        if base is None:
            raise EvalError(f"baseline {baseline[0]} @ {baseline[1]} steps is in none of the reports")
    path = cache_path(reference_cache_dir(cache_dir), first["reference"], first["features"], 10_000)
    if not path.is_file():
        raise EvalError(f"reference statistics {path.name} not in the cache {path.parent}; pass cache_dir= the "
                        "folder the reports were made with")
    stats = FeatureStats.load(path)
    n = int(first["num_images"])
    reference = Reference.build(stats, min(n, stats.kid_features.shape[0]))
    prompts = samples[0].diversity_features.shape[0] if samples[0].diversity_features is not None else 0
    boot = Bootstrap.create(n, reference.pr_features.shape[0], prompts, num=int(first["bootstrap_resamples"]))
    base_index = rows.index(base) if base is not None else None
    all_rows = rows + ([floor] if floor else [])
    score_rows(all_rows, samples + ([floor_samples] if floor else []), reference, boot, base_index)
    for r in rows:
        r["speedup"] = base["sec_per_image"] / r["sec_per_image"] if base is not None else None
    protocol = {**first, "compared_reports": [str(f) for f in folders],
                "paired_differences": (f"row - {base['model']} @ {base['steps']} steps, same resamples" if base
                                       else "none (no teacher row)")}
    return write_report(out_dir, rows, protocol, floor=floor)

