"""Settings search for the score-distillation students (issue 10): several ``fewstep train`` runs of one
tiny config side by side, each a set of ``--set`` overrides, read by their validation signal.

    python bench/score_sweep.py --config configs/tiny/dmd.yaml --out bench/results/score-sweep/NAME \
        --variant base= --variant b64=train.batch_size=64 --variant ttur10=method.fake_steps_per_generator=10 \
        [--steps 1000] [--parallel 8] [--deadline 600] [--threads 2]

Each variant runs ``--steps`` generator steps with validation (256 fixed prompts, "all five attributes
right" and FID on the embedded features at the trained step count) every ``--validate-every`` steps
and no checkpoints before the end; a run still going at ``--deadline`` seconds is stopped (its
validations so far are kept). Writes ``sweep.json`` (per variant: overrides, every validation,
seconds per step, how it ended) and ``sweep.md`` (best and last "all" per variant) into ``--out``.
On a GPU machine all variants share the one GPU; on a CPU give each one thread (``--threads 1``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read(run: Path) -> dict:
    logs = run / "logs.jsonl"
    recs = [json.loads(line) for line in logs.read_text().splitlines() if line.strip()] if logs.is_file() else []
    vals = [{"step": r["step"], **{k: r["validation"][k] for k in ("all", "fid") if k in r["validation"]}}
            for r in recs if isinstance(r.get("validation"), dict)]
    secs = [r["sec_per_step"] for r in recs if "sec_per_step" in r]
    steps = [r["step"] for r in recs if "step" in r]
    return {"validations": vals, "s_per_step": statistics.median(secs) if secs else None,
            "last_step": max(steps) if steps else 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/score-sweep"))
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                    help="a variant's name and its overrides, comma-separated (none after '=' for the config as is)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--validate-every", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--deadline", type=float, default=600, help="seconds; runs still going are stopped")
    ap.add_argument("--threads", type=int, default=2, help="OMP threads per run")
    args = ap.parse_args(argv)
    variants = {}
    for v in args.variant:
        name, _, sets = v.partition("=")
        if not name or name in variants:
            ap.error(f"--variant {v!r}: needs a new name before '='")
        variants[name] = [s for s in sets.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    t0, procs, pending, ended = time.perf_counter(), {}, list(variants), {}

    def save():
        rows = {n: {"overrides": variants[n], "ended": ended.get(n, "running"),
                    **read(args.work / "runs" / n)} for n in variants}
        result = {"config": args.config, "steps": args.steps, "elapsed_s": round(time.perf_counter() - t0, 1),
                  "variants": rows}
        (args.out / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
        lines = ["| variant | overrides | last step | s/step | best all (step) | last all | last FID | ended |",
                 "|---|---|---|---|---|---|---|---|"]
        for n, r in rows.items():
            vals = r["validations"]
            best = max(vals, key=lambda v: v.get("all", -1)) if vals else None
            lines.append(f"| {n} | {' '.join(r['overrides']) or '(as is)'} | {r['last_step']} | "
                         f"{r['s_per_step'] or 0:.3f} | " +
                         (f"{best['all']:.3f} ({best['step']}) | {vals[-1]['all']:.3f} | {vals[-1].get('fid', 0):.1f}"
                          if best else "- | - | -") + f" | {r['ended']} |")
        (args.out / "sweep.md").write_text("\n".join(lines) + "\n")

    while pending or procs:
        while pending and len(procs) < args.parallel:
            n = pending.pop(0)
            run = args.work / "runs" / n
            shutil.rmtree(run, ignore_errors=True)
            sets = [f"name={n}", f"output_dir={args.work / 'runs'}", f"train.steps={args.steps}",
                    f"train.validation_every={args.validate_every}", "train.checkpoint_every=0",
                    "validation.keep_best=false", "eval.enabled=false", *variants[n]]
            cmd = [sys.executable, "-m", "fewstep.pipelines.cli", "train", str(ROOT / args.config),
                   *[a for s in sets for a in ("--set", s)]]
            with open(args.work / f"{n}.log", "w") as log:
                procs[n] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(2)
        for n, p in list(procs.items()):
            if p.poll() is not None:
                ended[n] = "finished" if p.returncode == 0 else f"rc {p.returncode}: " + \
                    " | ".join((args.work / f"{n}.log").read_text(errors="replace").strip().splitlines()[-3:])
                del procs[n]
        if time.perf_counter() - t0 > args.deadline:
            for n, p in procs.items():
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                ended[n] = f"stopped at the {args.deadline:.0f} s deadline"
            ended.update({n: "not started" for n in pending})
            procs, pending = {}, []
        save()
    save()
    print((args.out / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
