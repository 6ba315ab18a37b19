"""Validation curves of training runs: attribute accuracy "all" and FID (256 held-out validation
prompts, fixed seeds) against the step, read from each run's logs.jsonl through runlog.read_logs.

    python bench/score_curves.py --run dmd=runs/tiny-dmd --run vsd-lora=runs/tiny-vsd-lora \
        --out bench/results/score/curves

Writes <out>.json (the points), <out>.md (a table) and <out>.png (the two panels).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewstep.distill.runlog import read_logs  # noqa: E402


def curve(run: Path) -> list[dict]:
    """(step, metrics) of every validation with metrics, in step order."""
    return [{"step": r["step"], **{k: v for k, v in r["validation"].items() if isinstance(v, (int, float))}}
            for r in read_logs(run) if isinstance(r.get("validation"), dict)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR")
    p.add_argument("--out", required=True, help="path prefix of the .json, .md and .png written")
    args = p.parse_args()
    curves = {}
    for spec in args.run:
        label, _, run = spec.partition("=")
        curves[label] = curve(Path(run))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(curves, indent=1) + "\n")
    lines = ["| run | step | all | FID (256) | CLIP |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {label} | {c['step']} | {c.get('all', float('nan')):.3f} | {c.get('fid', float('nan')):.1f} | "
              f"{c.get('clip', float('nan')):.3f} |" for label, points in curves.items() for c in points]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, points in curves.items():
        steps = [c["step"] for c in points]
        for ax, key in zip(axes, ("all", "fid")):
            ax.plot(steps, [c.get(key) for c in points], marker="o", ms=3, label=label)
    for ax, title in zip(axes, ('attribute accuracy "all" (1 step)', "FID, 256 images (1 step)")):
        ax.set_xlabel("generator / training step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
