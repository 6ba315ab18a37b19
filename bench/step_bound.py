"""Step cost vs its bound on the CPU (issue 13, target 2): for each training method, seconds per step next
to the sum of the passes the step must do, each timed alone on the same inputs.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/step_bound.py --out bench/results/step-bound

Writes <out>/bound.json and bound.md. Per config of ``CONFIGS``, a real Trainer (``score_cost.quiet_trainer``) on the
embedded teacher at the config's batch, one thread, glibc's thresholds raised as ``fewstep train`` does: ``--warmup``
iterations, ``--record`` recorded, ``--blocks`` + 1 blocks of ``--iterations`` timed (**step** = their median, first
phase step to the next iteration's), a replay block between each two. **Recorded**: each call of every UNet (the
shared LoRA UNet under its active adapter, or each full copy), the text encoder, the VAE's ``encode`` and other trained
modules (GAN head): inputs, grad mode, ``requires_grad`` flags, adapter state, whether it stopped at the mid-block
(``methods.gan.bottleneck``) and backward reached its output, its forward's CPU time, its role (the name the method
asked the ModelSet for). **Bound** = sum of the passes: each call replayed alone on its inputs in the recorded state,
plus a backward of ``out.float().square().mean()`` through the same parameters and inputs where backward reached the
output (alike calls: one pass); clipping + AdamW per phase; EMA updates. A replay block: ``--reps`` rounds over all
(default: one after each timed iteration, so both meet the same load on a shared machine; a warm-up round first); a
pass takes the median. **Rest** = step - bound: data batches (``next()`` on the trainer's loader), tokenizing, LoRA
views' adapter switches, timed alike; "other" is the remainder (arithmetic outside the networks, LR schedules,
autograd, Python, networks slower in the step than alone). Wall and process CPU time.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from statistics import median

import torch
from score_cost import around_phase_steps, quiet_trainer  # (bench/ is on sys.path when a script here runs)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
CONFIGS = {"lcm_lora.yaml": "LCM-LoRA", "lcm_full.yaml": "full LCM", "tscd_lora.yaml": "TSCD-LoRA",
           "dmd.yaml": "DMD2", "vsd.yaml": "VSD", "sid.yaml": "SiD"}
# Leaves a step's work unchanged: DMD's regression pairs are teacher samples made once before training (dmd.yaml:
# 1,024 of 25 CFG steps); a step draws a batch of them whatever their number.
SETUP = {"dmd.yaml": ["method.regression_pairs=64"]}
PARTS = ("text encode", "VAE encode", "teacher", "target", "student", "fake score", "GAN head", "optimizer", "EMA")
PART_OF = {"text_encoder": "text encode", "vae_encode": "VAE encode", "fake_score": "fake score",
           "gan_head": "GAN head"}
REST = ("data", "tokenize", "adapter switch")  # the parts of the rest timed alone
TARGET = 1.15


def both(f) -> dict:  # wall clock and process CPU time
    return {k: f(k) for k in ("wall", "cpu")}


def split(step: dict, rows: list[dict]) -> dict:
    """Bound (sum of count per step x seconds), parts, step / bound, rest ("other": what its parts leave)."""
    def per_step(parts):
        return both(lambda k: sum(p[k] * p["per_step"] for p in rows if p["part"] in parts))

    parts = {n: per_step((n,)) for n in dict.fromkeys([*PARTS, *(p["part"] for p in rows)]) if n not in REST}
    bound, rest = per_step(parts), {n: per_step((n,)) for n in REST}
    total = both(lambda k: step[k] - bound[k])
    return {"bound": bound, "ratio": both(lambda k: step[k] / bound[k]), "holds": step["cpu"] / bound["cpu"] <= TARGET,
            "parts": parts, "rest": {**rest, "total": total, "other": both(lambda k: total[k] - sum(
                rest[n][k] for n in REST))}}


class Saved:  # a recorded tensor input: a detached copy, and whether the original needed a gradient
    def __init__(self, t: torch.Tensor):
        self.t, self.grad = t.detach().clone(), t.requires_grad


def walk(x, f):
    if isinstance(x, (Saved, torch.Tensor)):
        return f(x)
    if isinstance(x, (list, tuple)):
        return type(x)(walk(v, f) for v in x)
    return {k: walk(v, f) for k, v in x.items()} if isinstance(x, dict) else x


def first_tensor(out):
    return out if torch.is_tensor(out) else out.sample if hasattr(out, "sample") else out[0]


class Spy:
    """``obj`` with ``enter(args, kwargs)`` run before each call, and what it returns (a callable) after."""
    def __init__(self, obj, enter):
        self.__dict__.update(obj=obj, enter=enter)

    def __call__(self, *args, **kwargs):
        done = self.enter(args, kwargs)
        try:
            return self.obj(*args, **kwargs)
        finally:
            done and done()

    def __getattr__(self, name):
        return getattr(self.__dict__["obj"], name)


def adapter_state(ctx: dict):
    return None if ctx["lora"] is None else (bool(ctx["lora"].disable_adapters), tuple(ctx["lora"].active_adapters))


class Recorder:
    """Records the calls of the run's networks while installed (module docstring)."""
    def __init__(self, trainer):
        from diffusers import UNet2DConditionModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        from fewstep.distill.modelset import BoundView, unwrap

        models, pipe, self.undo = trainer.models, trainer.models.pipe, []
        self.calls, self.tokens, self.roles, self.open, self.phase = [], [], [], {}, None
        self.switches, self.views, targets = Counter(), {}, {}
        for name, m in [*models.modules.items(), ("teacher", pipe.unet)]:
            unets = [s for s in unwrap(m).modules() if isinstance(s, UNet2DConditionModel)]
            for u in unets or ([unwrap(m)] if name in trainer.trained else []):  # other trained: the GAN head
                targets.setdefault(id(u), (name, u))
        targets.setdefault(id(pipe.text_encoder), ("text_encoder", pipe.text_encoder))
        for label, mod in targets.values():
            ctx = {"label": label, "fn": mod, "module": mod, "params": list(mod.parameters()),
                   "lora": next((x for x in mod.modules() if isinstance(x, BaseTunerLayer)), None),
                   "unet": isinstance(mod, UNet2DConditionModel)}
            self.undo += [mod.register_forward_pre_hook(partial(self._pre, ctx), with_kwargs=True).remove,
                          mod.register_forward_hook(partial(self._seen, ctx, "out")).remove]
            if ctx["unet"]:
                self.undo.append(mod.mid_block.register_forward_hook(partial(self._seen, ctx, "mid")).remove)
        vae, encode, tok, cls = pipe.vae, pipe.vae.encode, pipe.tokenizer, type(models)
        vae_ctx = {"label": "vae_encode", "fn": encode, "module": vae, "params": [], "lora": None, "unet": False}
        vae.encode = Spy(encode, lambda a, k: self._pre(vae_ctx, vae, a, k))
        object.__setattr__(pipe, "tokenizer", Spy(tok, lambda a, k: self.tokens.append((tok, a, k))))

        def enter_role(name, obj):
            if isinstance(obj, BoundView) and (obj.view.adapter or obj.view.base):
                self.switches[name] += 1
                self.views[name] = obj
            self.roles.append(name)
            return self.roles.pop

        class Recording(cls):
            def __getitem__(self, name):
                obj = cls.__getitem__(self, name)
                return Spy(obj, lambda a, k: enter_role(name, obj))

        models.__class__ = Recording
        self.undo += [lambda: vae.__delattr__("encode"), lambda: object.__setattr__(pipe, "tokenizer", tok),
                      lambda: setattr(models, "__class__", cls)]

    def close(self) -> None:
        for undo in self.undo:
            undo()

    def _pre(self, ctx, module, args, kwargs):
        entry = {"ctx": ctx, "label": self.roles[-1] if self.roles else ctx["label"], "phase": self.phase,
                 "args": walk(args, Saved), "kwargs": walk(kwargs, Saved), "grad_mode": torch.is_grad_enabled(),
                 "flags": tuple(p.requires_grad for p in ctx["params"]), "adapter": adapter_state(ctx),
                 "partial": ctx["unet"], "out_graph": False, "out_bwd": False, "mid_graph": False, "mid_bwd": False}
        self.calls.append(entry)
        self.open[id(module)] = entry
        entry["t0"] = time.process_time()  # the forward's own CPU time in the step (a cross-check)

    def _seen(self, ctx, key: str, module, args, output) -> None:  # the mid-block's output, or the call's ("out")
        if (entry := self.open.get(id(ctx["module"]))) is None:
            return
        entry["situ"], entry["partial"] = time.process_time() - entry["t0"], entry["partial"] and key == "mid"
        if (t := first_tensor(output)).requires_grad:
            entry[key + "_graph"] = True
            t.register_hook(lambda g: entry.__setitem__(key + "_bwd", True))


Stop = type("Stop", (Exception,), {})  # raised at the mid-block of a replayed bottleneck call: the rest is not run


@contextmanager
def module_state(ctx: dict, adapter, flags):
    """The module with the recorded adapter state and ``requires_grad`` flags; put back, gradients dropped, after."""
    def put(state, fl):
        if state is not None:
            ctx["module"].set_adapter(list(state[1]))
            ctx["module"].disable_adapters() if state[0] else ctx["module"].enable_adapters()
        for p, f in zip(ctx["params"], fl):
            p.requires_grad_(f)

    before = (adapter_state(ctx), [p.requires_grad for p in ctx["params"]])
    put(adapter, flags)
    try:
        yield
    finally:
        put(*before)
        for p in ctx["params"]:
            p.grad = None


def call_once(entry, backward: bool, autocast) -> float:
    """One replay (to the mid-block where the call stopped there); its forward's CPU seconds. Fresh leaves: an
    input needing a gradient gets its own each time."""
    ctx, found = entry["ctx"], {}
    args, kwargs = walk((entry["args"], entry["kwargs"]), lambda s: s.t.clone().requires_grad_(True) if s.grad else s.t)

    def stop(module, a, out):
        found["out"] = out
        raise Stop

    t0 = time.process_time()
    handle = ctx["module"].mid_block.register_forward_hook(stop) if entry["partial"] else None
    try:
        with torch.set_grad_enabled(entry["grad_mode"]), autocast():
            found["out"] = ctx["fn"](*args, **kwargs)
    except Stop:
        pass
    finally:
        handle and handle.remove()
    fwd = time.process_time() - t0
    if backward:
        first_tensor(found["out"]).float().square().mean().backward()
    return fwd


def jobs(rec: Recorder, trainer, steps: dict, updates: int) -> list[dict]:
    """What the replay blocks time (``state()`` to run in, ``run(i)``, its row): the passes and the rest's parts."""
    from fewstep.distill.data import has_images
    from fewstep.distill.loop import ema_update
    from fewstep.distill.modelset import adapters_as

    groups, out, mods, batches = defaultdict(list), [], trainer.models.modules, iter(trainer.loader)

    def job(run, part, role, per_step, state=nullcontext, **row):
        out.append({"state": state, "run": run, "row": {"phase": "-", "role": role, "part": part,
                                                        "per_step": per_step / updates, **row}})

    for c in rec.calls:  # a call's cost: module, role, flags, and its inputs' shapes, dtypes and gradient flags
        inputs = repr(walk((c["args"], c["kwargs"]), lambda s: (tuple(s.t.shape), s.t.dtype, s.grad)))
        out_ = "mid" if c["partial"] else "out"
        how = "fwd+bwd" if c[out_ + "_bwd"] else "fwd (graph)" if c[out_ + "_graph"] else "fwd"
        key = (id(c["ctx"]["fn"]), c["label"], c["phase"], how, c["partial"], inputs, c["flags"], c["adapter"])
        groups[key].append(c)
    for (_, label, phase, how, stop, *_), g in groups.items():
        lead = next(s for s in [*g[0]["args"], *g[0]["kwargs"].values()] if isinstance(s, Saved))
        situ = [c["situ"] for c in g if "situ" in c]
        job(lambda i, g=g, b=how == "fwd+bwd": call_once(g[i % len(g)], b, trainer.acc.autocast),
            PART_OF.get(label, label), label, len(g), partial(module_state, g[0]["ctx"], g[0]["adapter"],
                                                              g[0]["flags"]),
            phase=phase, mode=how, to_mid_block=stop, rows=lead.t.shape[0], situ_fwd_cpu=median(situ) if situ else None)

    @contextmanager
    def phase_grads(plan):  # the phase's parameters with (zero) gradients, as at its optimizer step
        for p in trainer.params[plan.name]:
            p.grad = torch.zeros_like(p)
        yield
        trainer.opts[plan.name].zero_grad(set_to_none=True)

    def switch(i, view):
        with adapters_as(view.unet, view.view):
            pass

    for plan in trainer.plans:
        ps, opt, n = trainer.params[plan.name], trainer.opts[plan.name], plan.max_grad_norm
        job(lambda i, ps=ps, o=opt, n=n: (n > 0 and trainer.acc.clip_grad_norm_(ps, n), o.step()), "optimizer",
            "grad clip + AdamW" if n > 0 else "AdamW", steps[plan.name], partial(phase_grads, plan), phase=plan.name,
            rows=sum(p.numel() for p in ps))
    for t, s, d in trainer.models.ema:
        job(lambda i, t=t, s=s, d=d: ema_update(mods[t], mods[s], d), "EMA", f"{t} <- {s}", updates,
            rows=sum(p.numel() for p in mods[t].parameters()))
    # each phase but a "none" one draws a full batch per micro-step; a "prompts" one keeps only its captions
    draws = {p.name: steps[p.name] * trainer.cfg.train.grad_accum / updates for p in trainer.plans
             if p.phase.data != "none"}
    job(lambda i: next(batches), "data", "data batch", sum(draws.values()) * updates, draws=draws, for_captions=sum(
        draws[p.name] for p in trainer.plans if p.phase.data == "prompts" and has_images(trainer.cfg.data)))
    if rec.tokens:
        job(lambda i: (lambda t, a, k: t(*a, **k))(*rec.tokens[i % len(rec.tokens)]), "tokenize", "tokenizer call",
            len(rec.tokens))
    for name, view in rec.views.items():
        job(partial(switch, view=view), "adapter switch", name, rec.switches[name])
    return out


def replay(todo: list[dict], reps: int) -> None:
    """A block: ``reps`` rounds over all (round robin; first a warm-up round, once), into ``job["runs"]``."""
    for i in range(0 if "runs" in todo[0] else -1, reps):
        for job in todo:
            with job["state"]():
                w, c = time.perf_counter(), time.process_time()
                fwd = job["run"](max(i, 0))  # a replayed call returns its forward's CPU seconds
                sample = (time.perf_counter() - w, time.process_time() - c, fwd if isinstance(fwd, float) else None)
            if i >= 0:
                job.setdefault("runs", []).append(sample)


def measure(config: str, args) -> dict:
    from fewstep.distill.run_config import load_config
    from fewstep.pipelines.teacher import load_pipeline

    first = args.warmup + args.record  # recorded: warmup .. first - 1; then timed blocks with replay blocks between
    points = [first + args.iterations * (b + 1) for b in range(args.blocks)]
    end = first + args.iterations * (args.blocks + 1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(TINY / config, [f"output_dir={tmp}", f"train.steps={end}", "train.validation_every=0",
                                          "train.checkpoint_every=0", "train.log_every=1000000", "eval.enabled=false",
                                          *SETUP.get(config, []), *args.set])
        trainer, marks, state = quiet_trainer(cfg, load_pipeline("tiny-sd")), {}, {"replay_s": 0.0}

        def before(plan):
            if trainer.step not in marks:
                now = (time.perf_counter(), time.process_time())  # the previous iteration's end
                if trainer.step == args.warmup:
                    state["rec"], state["base"] = Recorder(trainer), dict(trainer.phase_steps)
                elif trainer.step == first:
                    state["rec"].close()
                    steps = {k: v - state["base"][k] for k, v in trainer.phase_steps.items()}
                    state["jobs"] = jobs(state["rec"], trainer, steps, args.record)
                elif trainer.step in points:
                    t1 = time.time()
                    replay(state["jobs"], args.reps)
                    state["replay_s"] += time.time() - t1
                marks[trainer.step] = (now, (time.perf_counter(), time.process_time()))  # (end of i - 1, start of i)
            if "rec" in state and trainer.step < first:
                state["rec"].phase = plan.name

        around_phase_steps(trainer, before, lambda plan, token: None)
        trainer.train()
        marks[end] = ((time.perf_counter(), time.process_time()), None)
    per = [[marks[i + 1][0][j] - marks[i][1][j] for i in range(first, end)] for j in range(2)]
    rows = []
    for j in state["jobs"]:  # each pass's medians (and its replayed forward's CPU, for a call)
        wall, cpu, fwd = zip(*j["runs"])
        fwd = {"fwd_cpu": median(fwd)} if fwd[0] is not None else {}
        rows.append({**j["row"], "wall": median(wall), "cpu": median(cpu), **fwd})
    situ = [p for p in rows if p.get("situ_fwd_cpu") is not None]  # a cross-check: forwards alone vs in the step
    fwds = {k: sum(p[f] * p["per_step"] for p in situ) for k, f in (("alone", "fwd_cpu"), ("in_step", "situ_fwd_cpu"))}
    step = {"wall": median(per[0]), "cpu": median(per[1]), "wall_all": per[0], "cpu_all": per[1]}
    return {"config": config, "method": CONFIGS[config], "name": cfg.method.name, "kind": cfg.student.kind,
            "batch": cfg.train.batch_size, "replay_s": state["replay_s"], "step": step, **split(step, rows),
            "forwards_cpu": fwds, "passes": rows}


def report(results: dict) -> str:
    def ms(x: float) -> str:
        return f"{1000 * x:.0f}" if abs(x) >= 0.01 else f"{1000 * x:.1f}"

    def table(head: list, rows: list) -> list[str]:
        return ["| " + " | ".join(map(str, r)) + " |" for r in [head, ["---"] * len(head), *rows]]

    runs, a = results["runs"], results["args"]
    lines = table(["method (config)", "batch", "s / step wall (CPU)", "bound wall (CPU)", "step / bound wall (CPU)",
                   f"<= {TARGET}x (CPU)"], [
        [f"{r['method']} (`{r['config']}`)", r["batch"], f"{r['step']['wall']:.3f} ({r['step']['cpu']:.3f})",
         f"{r['bound']['wall']:.3f} ({r['bound']['cpu']:.3f})", f"{r['ratio']['wall']:.2f} ({r['ratio']['cpu']:.2f})",
         "holds" if r["holds"] else "misses"] for r in runs])
    lines += ["", "CPU ms per step (a generator update); last: recorded forwards, replayed alone / in the step:", ""]
    lines += table(["method", *PARTS, "bound", "rest", *REST, "other", "fwds alone / in step"], [
        [r["method"], *(ms(r["parts"][p]["cpu"]) if r["parts"][p]["cpu"] else "-" for p in PARTS),
         *(ms(x["cpu"]) for x in (r["bound"], r["rest"]["total"], *(r["rest"][n] for n in REST), r["rest"]["other"])),
         f"{ms(r['forwards_cpu']['alone'])} / {ms(r['forwards_cpu']['in_step'])}"] for r in runs])
    lines += ["", "Each pass: phase: role, mode [rows] count per step x CPU ms, alone:", ""]
    for r in runs:
        c = next(p for p in r["passes"] if p["part"] == "data")["for_captions"]  # images rendered, then dropped
        lines.append(f"- **{r['method']}**: " + "; ".join(
            f"{p['phase']}: {p['role']}{' ' + p['mode'] if 'mode' in p else ''}"
            f"{' to mid-block' if p.get('to_mid_block') else ''} [{p['rows']}] {p['per_step']:g} x {ms(p['cpu'])}"
            for p in r["passes"] if p["part"] not in REST) + "."
            + (f" Full batches drawn for their captions only (images rendered, dropped): {c:g} per step." if c else ""))
    lines += ["", f"s/step: median of {(a['blocks'] + 1) * a['iterations']} iterations; a pass: median of "
              f"{a['blocks'] * a['reps']} replays, interleaved with them. One thread, shared 2-core machine: the "
              f"verdict uses CPU seconds. DMD2 with {SETUP['dmd.yaml'][0]} (made before training; a step's work does "
              "not depend on it)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from fewstep.distill.memory import retain_freed_memory

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "step-bound")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every config, e.g. train.compile=true (repeatable)")
    for name, default in (("warmup", 2), ("record", 2), ("iterations", 1), ("blocks", 11), ("reps", 1)):
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    retained = retain_freed_memory()  # as `fewstep train` does at start-up (bench/PERFORMANCE.md, page faults)
    args.out.mkdir(parents=True, exist_ok=True)
    t0, runs = time.time(), []
    for config in args.configs.split(","):
        runs.append(r := measure(config, args))
        print(f"{config}: step {r['step']['cpu']:.3f} CPU s, bound {r['bound']['cpu']:.3f}, {r['ratio']['cpu']:.2f}x "
              f"[replays {r['replay_s']:.0f} s]", flush=True)
    command = "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/step_bound.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    results = {"command": command.strip(), "seconds": round(time.time() - t0), "torch": torch.__version__,
               "retain_freed_memory": retained, "args": {k: v for k, v in vars(args).items() if k != "out"},
               "runs": runs}
    (args.out / "bound.json").write_text(json.dumps(results, indent=1) + "\n")
    md = f"# Step cost vs its bound (CPU)\n\n`{results['command']}`\n\n{report(results)}\n"
    (args.out / "bound.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
