"""The live quality signal (issue 10): validation metrics in logs.jsonl, the best export in
runs/<name>/best, the early-stop alarm, and their state across --resume.

The bookkeeping (``distill.watch.Watch``) is tested as a pure object; the loop's use of it with an
injected validator whose numbers the test controls (deterministic streaks, resume); and
``pipelines.validation.MetricValidator`` end to end through ``fewstep train`` on a very small fresh
pipeline (real generation, embedded judges, plain-diffusers load of best/)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from fewstep.distill.config import ConfigError, ValidationConfig, watched_metric
from fewstep.distill.loop import Trainer, list_checkpoints, preflight
from fewstep.distill.run_config import parse_config
from fewstep.distill.runlog import read_logs
from fewstep.distill.watch import BEST_DIR, Watch
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import fewstep, run_dict


def _records(run: Path) -> list[dict]:
    return read_logs(run, strict=True)  # no NaN or Infinity in logs.jsonl


def _validations(run: Path) -> list[tuple[int, dict]]:
    return [(r["step"], r["validation"]) for r in _records(run) if "validation" in r]


# ---- the bookkeeping, as a pure object ------------------------------------------------------------
def _feed(watch: Watch, values: dict[int, float | None]) -> list[Watch]:
    states = []
    for step, value in values.items():
        watch = watch.observe(value, step)
        states.append(watch)
    return states


def test_higher_is_better_best_streak_and_alarm():
    states = _feed(Watch("all", True, patience=2), {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.7, 5: 0.65, 6: None})
    assert [(w.best, w.best_step, w.streak) for w in states] == [
        (0.5, 1, 0), (0.7, 2, 0), (0.7, 2, 1),
        (0.7, 2, 0),  # a tie with the best is not "worse": the streak breaks, the best stays at step 2
        (0.7, 2, 1), (0.7, 2, 2)]  # a missing value counts as worse
    assert [w.should_stop for w in states] == [False] * 5 + [True]
    assert not Watch("all", True, patience=0, streak=99).should_stop  # 0: the alarm is off


def test_lower_is_better_and_non_finite_values_never_win():
    states = _feed(Watch("fid", False, patience=3), {10: float("nan"), 20: 40.0, 30: 41.0, 40: 39.5,
                                                     50: float("inf"), 60: 39.6, 70: 50.0})
    assert [(w.best, w.best_step, w.streak) for w in states] == [
        (None, None, 1), (40.0, 20, 0), (40.0, 20, 1), (39.5, 40, 0), (39.5, 40, 1), (39.5, 40, 2), (39.5, 40, 3)]
    assert states[-1].should_stop
    line = states[-1].stop_reason(70, Path("runs/x/best"))
    assert line == ("stopped at step 70: 'fid' has been above its best 39.5 (step 40) for 3 validations; "
                    "best export: runs/x/best")
    assert "below its best 0.81 (step 300)" in Watch("all", True, 3, best=0.81, best_step=300, streak=3).stop_reason(
        600, None)


def test_state_round_trip_and_what_resets_it():
    fresh = Watch("all", True, patience=3, protocol="p")
    seen = fresh.observe(0.8, 100).observe(0.7, 200)
    state = json.loads(json.dumps(seen.as_state()))  # what a checkpoint stores
    assert fresh.resumed(state) == seen
    assert fresh.resumed(None) == fresh  # a checkpoint written before validation metrics existed
    assert Watch("fid", False, 3, protocol="p").resumed(state).best is None  # another metric: a new best
    assert Watch("all", True, 3, protocol="other").resumed(state).best is None  # another protocol too


# ---- configuration: bad values fail before any model is loaded -----------------------------------
def _cfg(tmp_path, **validation):
    raw = run_dict(tmp_path, validation_every=2)
    raw["validation"].update(metrics=True, **validation)
    return raw


@pytest.mark.parametrize("change,needle", [
    ({"metric": "fidd"}, "validation.metric: 'fidd' is not allowed"),
    ({"num_prompts": 1}, "validation.num_prompts: must be >= 2"),
    ({"patience": -1}, "validation.patience: must be >= 0"),
    ({"steps": [0]}, r"validation.steps\[0\]: must be >= 1"),
])
def test_ill_typed_or_out_of_range_validation_keys(tmp_path, change, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_config(_cfg(tmp_path, **change))


def test_defaults_and_cross_section_checks(tmp_path):
    d = ValidationConfig()
    assert d.metrics and d.num_prompts == 256 and d.keep_best and d.patience == 0 and d.steps == [] and d.metric is None
    assert watched_metric(parse_config(_cfg(tmp_path))) == "all"  # the default on procedural prompts
    lcm = _cfg(tmp_path)
    lcm["method"] = {"name": "lcm", "num_ddim_timesteps": 10}
    assert preflight(parse_config(lcm)).validation_steps == [1]  # the smallest trained step count
    lcm["eval"] = {"steps": [4, 2]}
    assert preflight(parse_config(lcm)).validation_steps == [2]  # else the smallest of eval.steps
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a cat\n")
    for change, needle in [
        ({"data": {"source": "prompts", "path": str(prompts)}, "validation": {"metric": "all"}},
         "validation.metric: 'all' (attribute accuracy) needs procedural prompts"),
        ({"validation": {"metrics": False, "patience": 2}}, "validation.patience: 2 needs validation.metrics: true"),
        ({"train": {"validation_every": 0}, "validation": {"patience": 2}}, "needs train.validation_every > 0"),
        ({"validation": {"steps": [12]}}, "validation.steps: the student is trained for"),
    ]:
        raw = _cfg(tmp_path)
        raw["method"] = {"name": "lcm", "num_ddim_timesteps": 10}
        for section, values in change.items():
            raw[section] = {**raw.get(section, {}), **values}
        with pytest.raises(ConfigError, match=re.escape(needle)):
            preflight(parse_config(raw))
    raw = _cfg(tmp_path)
    raw["data"] = {"source": "prompts", "path": str(prompts)}
    assert watched_metric(parse_config(raw)) == "fid"  # the default off procedural prompts


def test_cli_reports_a_bad_metric_before_loading_the_teacher(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a cat\n")
    raw = _cfg(tmp_path, metric="all")
    raw["method"] = {"name": "lcm"}
    raw["model"] = {"pretrained": str(tmp_path / "no-such-teacher")}  # never reached
    raw["data"] = {"source": "prompts", "path": str(prompts)}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, err = fewstep(capsys, "train", path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fewstep: error: validation.metric"), err


# ---- the loop with a validator whose numbers the test controls -----------------------------------
class ScriptedValidator:
    """Returns ``values[step]`` as the watched metric; records which steps were exported as best."""

    protocol = "scripted"

    def __init__(self, metric: str, values: dict[int, float | None]):
        self.metric, self.values, self.kept = metric, values, []

    def measure(self, method, models, step):
        return [{"steps": 1, self.metric: self.values[step], "other": float("nan"), "seconds": 0.0}]

    def keep_best(self, method, models, step, metrics, grid_prompts):
        assert metrics[self.metric] == self.values[step] and grid_prompts
        self.kept.append(step)


def _trainer(tmp_path, values, steps, metric="all", **validation):
    raw = run_dict(tmp_path, steps=steps, validation_every=2, checkpoint_every=4)
    raw["validation"].update(metrics=True, metric=metric, **validation)
    cfg = parse_config(raw)
    validator = ScriptedValidator(metric, values)
    return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0), validator=validator), validator


def test_alarm_stops_the_run_and_saves_that_step(tmp_path):
    values = {2: 0.5, 4: 0.6, 6: 0.55, 8: 0.4, 10: 0.9, 12: 0.9}
    trainer, validator = _trainer(tmp_path, values, steps=12, patience=2)
    trainer.train()
    assert trainer.step == 8 and validator.kept == [2, 4]
    assert trainer.stopped == (f"stopped at step 8: 'all' has been below its best 0.6 (step 4) for 2 validations; "
                               f"best export: {trainer.run_dir / BEST_DIR}")
    records = _records(trainer.run_dir)
    assert [(s, v["all"]) for s, v in _validations(trainer.run_dir)] == [(2, 0.5), (4, 0.6), (6, 0.55), (8, 0.4)]
    assert all(v["other"] is None for _, v in _validations(trainer.run_dir))  # NaN is logged as null
    assert records[-1] == {"step": 8, "event": "stopped", "reason": trainer.stopped, "metric": "all",
                           "protocol": "scripted", "best": 0.6, "best_step": 4, "streak": 2}
    assert [s for s, _ in list_checkpoints(trainer.run_dir)] == [4, 8]
    state = json.loads((trainer.run_dir / "checkpoints" / "checkpoint-8" / "fewstep_state.json").read_text())
    assert state["validation"] == {"metric": "all", "protocol": "scripted", "best": 0.6, "best_step": 4, "streak": 2,
                                   "validated_at": 8}
    assert (trainer.run_dir / "samples" / "step-000008.png").is_file()


def test_resume_keeps_the_best_and_the_streak(tmp_path):
    """A streak that straddles the checkpoint still fires, and the best is neither lost nor exported twice."""
    values = {2: 0.5, 4: 0.4, 6: 0.3, 8: 0.9}  # best at 2; worse at 4 (checkpoint) and 6: stop at 6
    full, full_validator = _trainer(tmp_path / "a", values, steps=8, patience=2)
    full.train()
    first, first_validator = _trainer(tmp_path / "b", values, steps=4, patience=2)
    first.train()  # ends at step 4: its last validation and checkpoint
    second, second_validator = _trainer(tmp_path / "b", values, steps=8, patience=2)
    second.load_checkpoint(list_checkpoints(second.run_dir)[-1][1])
    assert (second.watch.best, second.watch.best_step, second.watch.streak) == (0.5, 2, 1)
    second.train()
    assert full.step == second.step == 6
    assert full.stopped.replace(str(tmp_path / "a"), "") == second.stopped.replace(str(tmp_path / "b"), "")
    assert full_validator.kept == [2] and first_validator.kept + second_validator.kept == [2]
    assert _validations(full.run_dir) == _validations(second.run_dir)
    saved = [json.loads((t.run_dir / "checkpoints" / "checkpoint-6" / "fewstep_state.json").read_text())["validation"]
             for t in (full, second)]
    assert saved[0] == saved[1]


def test_checkpoint_without_validation_state_still_loads(tmp_path):
    trainer, _ = _trainer(tmp_path, {2: 0.5, 4: 0.4}, steps=4)
    trainer.train()
    ckpt = list_checkpoints(trainer.run_dir)[-1][1]
    done, validator = _trainer(tmp_path, {}, steps=4)  # resuming a finished run: its end is not measured twice
    done.load_checkpoint(ckpt)
    done.train()
    assert done.watch == trainer.watch and done.watch.streak == 1 and validator.kept == []
    assert [s for s, _ in _validations(trainer.run_dir)] == [2, 4]
    path = ckpt / "fewstep_state.json"
    state = json.loads(path.read_text())
    del state["validation"]  # as written before validation metrics existed (and before the full manifest)
    del state["manifest"]
    (ckpt / "manifest.json").unlink()
    path.write_text(json.dumps(state))
    again, _ = _trainer(tmp_path, {}, steps=6)
    again.load_checkpoint(ckpt)
    assert again.step == 4 and again.watch.best is None and again.watch.streak == 0


# ---- the real validator, end to end through `fewstep train` --------------------------------------
def _full_student_run(tmp_path, **train):
    raw = run_dict(tmp_path, method="lcm", **train)
    raw["method"].update({"num_ddim_timesteps": 10, "target_ema": 0.5})
    raw["validation"].update({"metrics": True, "metric": "fid", "num_prompts": 64})
    return raw


def test_fewstep_train_logs_metrics_and_keeps_the_best_export(tmp_path, capsys):
    import diffusers

    raw = _full_student_run(tmp_path, steps=6, validation_every=2, checkpoint_every=2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, err = fewstep(capsys, "train", path)
    assert code == 0, err
    run = tmp_path / "runs" / "t"
    found = _validations(run)
    assert [s for s, _ in found] == [2, 4, 6]
    for _, v in found:
        assert set(v) == {"steps", "all", "fid", "clip", "seconds"} and v["steps"] == 1
        assert all(math.isfinite(x) for x in v.values()) and 0 <= v["all"] <= 1
    best = json.loads((run / BEST_DIR / "best.json").read_text())
    assert best["step"] == min(found, key=lambda sv: sv[1]["fid"])[0]
    assert best["metrics"] == dict(found)[best["step"]]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(run / BEST_DIR)  # plain diffusers
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    image = pipe("a large red circle on the left, gray background", num_inference_steps=1, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    assert (run / "export" / "model_index.json").is_file()
    state = json.loads((run / "checkpoints" / "checkpoint-6" / "fewstep_state.json").read_text())
    assert state["validation"]["best_step"] == best["step"]  # the last validation ran before the last checkpoint
    # `fewstep eval --run --best` evaluates best/ (into eval-best/), not export/
    code, err = fewstep(capsys, "eval", "--run", run, "--best", "--steps", "1", "--num-images", "4", "--teacher-steps", "",
                        "--no-floor", "--diversity-prompts", "1", "--diversity-seeds", "2", "--bootstrap", "2")
    assert code == 0, err
    rows = json.loads((run / "eval-best" / "metrics.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [1]
    models = json.loads((run / "eval-best" / "metrics.json").read_text())["protocol"]["models"]
    assert [m["pipeline"] for m in models.values()] == [str(run / BEST_DIR)]
    code, err = fewstep(capsys, "eval", "--best", "--pipeline", "x")
    assert code == 2 and "--best needs --run RUN_DIR" in err


def test_fewstep_train_alarm_prints_one_line_and_still_exports(tmp_path, capsys, monkeypatch):
    """The alarm through the command line: FID is made to rise after step 2 (the real measurement
    runs; only the watched number is scripted), patience 2 stops the run at step 6 of 10."""
    from fewstep.pipelines.validation import MetricValidator

    rising = {2: 30.0, 4: 31.0, 6: 32.0}
    original = MetricValidator.measure

    def measure(self, method, models, step):
        records = original(self, method, models, step)
        records[0]["fid"] = rising[step]
        return records

    monkeypatch.setattr(MetricValidator, "measure", measure)
    raw = _full_student_run(tmp_path, steps=10, validation_every=2, checkpoint_every=0)
    raw["validation"]["patience"] = 2
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, err = fewstep(capsys, "train", path)
    assert code == 0, err
    run = tmp_path / "runs" / "t"
    stopped = [line for line in err.splitlines() if "stopped" in line]
    assert stopped == [f"fewstep: stopped at step 6: 'fid' has been above its best 30 (step 2) for 2 validations; "
                       f"best export: {run / BEST_DIR}"], err
    assert json.loads((run / BEST_DIR / "best.json").read_text())["step"] == 2
    assert [s for s, _ in list_checkpoints(run)] == [6]
    assert (run / "export" / "model_index.json").is_file()  # the final weights are exported as usual
    assert _records(run)[-1]["event"] == "stopped"


def test_resumed_run_measures_what_an_uninterrupted_run_measures(tmp_path):
    """The real validator across a resume: the same numbers at the same steps (bitwise: the weights
    are, and the prompts and seeds are fixed), and the best carried in the checkpoint."""
    from fewstep.pipelines.validation import MetricValidator

    def trainer(root, steps):
        raw = _full_student_run(root, steps=steps, validation_every=2, checkpoint_every=4)
        raw["validation"]["num_prompts"] = 16
        cfg = parse_config(raw)
        checked = preflight(cfg)
        validator = MetricValidator.build(cfg, checked.validation_steps, resolution=32)
        return Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0), checked=checked, validator=validator)

    full = trainer(tmp_path / "a", 6)
    full.train()
    trainer(tmp_path / "b", 4).train()
    second = trainer(tmp_path / "b", 6)
    second.load_checkpoint(list_checkpoints(second.run_dir)[-1][1])
    second.train()
    strip = lambda found: [(s, {k: x for k, x in v.items() if k != "seconds"}) for s, v in found]  # noqa: E731
    assert [s for s, _ in _validations(second.run_dir)] == [2, 4, 6]
    assert strip(_validations(full.run_dir)) == strip(_validations(second.run_dir))
    assert full.watch == second.watch
    best = lambda t: json.loads((t.run_dir / BEST_DIR / "best.json").read_text())["step"]  # noqa: E731
    assert best(full) == best(second) == full.watch.best_step


def test_prompts_other_than_procedural_captions_get_clip_and_fid(tmp_path):
    """Off the embedded domain: no attribute accuracy, the prompts are the data source's captions
    (repeated up to num_prompts), image i still uses seed i."""
    from fewstep.pipelines.validation import MetricValidator, validation_prompts

    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a cat\na red bicycle\nan old lighthouse\n")
    raw = run_dict(tmp_path)
    raw["data"] = {"source": "prompts", "path": str(prompts)}
    raw["validation"].update({"metrics": True, "num_prompts": 4})
    cfg = parse_config(raw)
    assert validation_prompts(cfg)[0] == ["a photo of a cat", "a red bicycle", "an old lighthouse", "a photo of a cat"]
    validator = MetricValidator.build(cfg, [3], resolution=32)
    assert "fid at [3] steps" in validator.protocol
    trainer = Trainer(parse_config(run_dict(tmp_path / "t")), build_tiny_pipeline(cfg.model.tiny, seed=0))
    first, again = (validator.measure(trainer.method, trainer.models, 0) for _ in range(2))
    assert set(first[0]) == {"steps", "fid", "clip", "seconds"} and first[0]["steps"] == 3
    assert first[0]["fid"] == again[0]["fid"] and first[0]["clip"] == again[0]["clip"]  # fixed prompts and seeds
