"""fewstep's LCM-LoRA against diffusers' script over several training seeds (issue 13, target 1): the
per-seed results of ``bench/reference_lcm.py`` side by side, and fewstep - script paired by seed with a
t-interval over seeds (the training run is the unit: the prompt intervals inside one run do not cover
what the seed does).

    .venv/bin/python bench/reference_seeds.py bench/results/reference-lcm-compiled/seed* \
        --out bench/results/reference-lcm-compiled/seeds.md
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy.stats import t as student_t

STEPS = (1, 2, 4)


def t_interval(diffs: list[float]) -> tuple[float, float, float] | None:
    """Mean of ``diffs`` and its two-sided 95 % Student t-interval (None with fewer than 2 values)."""
    n = len(diffs)
    if n < 2:
        return None
    mean = statistics.fmean(diffs)
    half = float(student_t.ppf(0.975, n - 1)) * statistics.stdev(diffs) / n ** 0.5
    return mean, mean - half, mean + half


def per_seed(results: dict) -> dict:
    sp, mem, q = results["speed"], results["memory"], results.get("quality") or {}
    row = {"seed": results["seed"], "steps": results["steps"],
           "speed_ratio": sp.get("ratio_fewstep_over_reference"),
           "speed_ci": (sp.get("ratio_blocks") or {}).get("ci95"),
           "largest_process_ratio": mem["fewstep"]["largest_process_bytes"] / mem["reference"]["largest_process_bytes"],
           "tree_ratio": mem["fewstep"]["tree_bytes"] / mem["reference"]["tree_bytes"]}
    if "largest_process_anon_bytes" in mem["reference"]:
        row["anon_ratio"] = mem["fewstep"]["largest_process_anon_bytes"] / mem["reference"]["largest_process_anon_bytes"]
    for s in STEPS:
        e = q.get(str(s)) or q.get(s)
        if e:
            for side in ("reference", "fewstep"):
                row[f"all@{s}:{side}"] = e[side]["all"]
                row[f"fid_inf@{s}:{side}"] = e[side]["fid_infinity"]
    return row


def summary(rows: list[dict]) -> dict:
    out = {"seeds": [r["seed"] for r in rows], "speed_ratio": t_interval([r["speed_ratio"] for r in rows])}
    for key in ("largest_process_ratio", "tree_ratio", "anon_ratio"):
        vals = [r[key] for r in rows if key in r]
        out[key] = [min(vals), max(vals)] if vals else None
    for s in STEPS:
        for metric in ("all", "fid_inf"):
            pairs = [(r[f"{metric}@{s}:fewstep"], r[f"{metric}@{s}:reference"]) for r in rows
                     if f"{metric}@{s}:fewstep" in r]
            out[f"{metric}@{s}"] = {"fewstep_mean": statistics.fmean(a for a, _ in pairs) if pairs else None,
                                    "reference_mean": statistics.fmean(b for _, b in pairs) if pairs else None,
                                    "diff": t_interval([a - b for a, b in pairs]), "seeds": len(pairs),
                                    "median_diff": statistics.median(a - b for a, b in pairs) if pairs else None,
                                    # seeds where fewstep is better: higher "all", lower FID-infinity
                                    "fewstep_better": sum((a > b) if metric == "all" else (a < b) for a, b in pairs)}
    return out


def _iv(t, digits=3) -> str:
    if t is None:
        return "-"
    star = "*" if t[1] > 0 or t[2] < 0 else ""
    return f"{t[0]:+.{digits}f} [{t[1]:+.{digits}f}, {t[2]:+.{digits}f}]{star}"


def markdown(rows: list[dict], s: dict, sources: list[str]) -> str:
    lines = ["# fewstep's LCM-LoRA against diffusers' script, over training seeds", "",
             f"From: {', '.join(sources)}. Intervals over seeds: mean and 95 % t-interval of the per-seed "
             "values (fewstep - script paired by seed; `*` excludes 0).", "",
             "| seed | steps/s ratio [10 slices] | peak RSS largest process | anon. largest | tree | "
             + " | ".join(f'"all"@{k}: script / fewstep' for k in STEPS) + " | FID-inf@1: script / fewstep |",
             "| --- " * (6 + len(STEPS)) + "|"]
    for r in rows:
        ci = r["speed_ci"]
        cells = [f"{r['seed']}", f"{r['speed_ratio']:.3f}x" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""),
                 f"{r['largest_process_ratio']:.2f}x", f"{r['anon_ratio']:.2f}x" if "anon_ratio" in r else "-",
                 f"{r['tree_ratio']:.2f}x"]
        for k in STEPS:
            a, b = r.get(f"all@{k}:reference"), r.get(f"all@{k}:fewstep")
            cells.append(f"{a:.3f} / {b:.3f}" if a is not None else "-")
        a, b = r.get("fid_inf@1:reference"), r.get("fid_inf@1:fewstep")
        cells.append(f"{a:.1f} / {b:.1f}" if a is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    sr = s["speed_ratio"]
    lines += ["", f"Steps/s, fewstep / script, over {len(rows)} seeds: "
              + (f"mean {sr[0]:.3f}x [{sr[1]:.3f}, {sr[2]:.3f}]" if sr else "-")
              + f"; peak RSS of the largest process {s['largest_process_ratio'][0]:.2f}-{s['largest_process_ratio'][1]:.2f}x"
              + f", process tree {s['tree_ratio'][0]:.2f}-{s['tree_ratio'][1]:.2f}x.", "",
              "| steps | \"all\": script mean | \"all\": fewstep mean | fewstep - script [95 % over seeds] | median | "
              "fewstep better in | FID-inf: script mean | FID-inf: fewstep mean | fewstep - script [95 % over seeds] | "
              "median | fewstep better in |", "| --- " * 11 + "|"]
    for k in STEPS:
        a, f = s[f"all@{k}"], s[f"fid_inf@{k}"]
        if not a["seeds"]:
            continue
        lines.append(f"| {k} | {a['reference_mean']:.3f} | {a['fewstep_mean']:.3f} | {_iv(a['diff'])} | "
                     f"{a['median_diff']:+.3f} | {a['fewstep_better']} of {a['seeds']} | "
                     f"{f['reference_mean']:.1f} | {f['fewstep_mean']:.1f} | {_iv(f['diff'], 1)} | "
                     f"{f['median_diff']:+.1f} | {f['fewstep_better']} of {f['seeds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="--out folders of bench/reference_lcm.py runs (one per seed)")
    p.add_argument("--out", required=True, help="markdown file; a .json beside it")
    args = p.parse_args()
    rows = []
    for folder in args.results:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise SystemExit(f"reference_seeds: {path}: not found")
        rows.append(per_seed(json.loads(path.read_text())))
    if len({r["steps"] for r in rows}) > 1:
        raise SystemExit(f"reference_seeds: the runs trained different step counts: {sorted({r['steps'] for r in rows})}")
    rows.sort(key=lambda r: r["seed"])
    s = summary(rows)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "summary": s}, indent=2) + "\n")
    out.write_text(markdown(rows, s, args.results))
    print(out.read_text())


if __name__ == "__main__":
    main()
