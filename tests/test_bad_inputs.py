"""Every kind of bad input ends in exactly one line ``fewstep: error: ...`` naming the key or file, exit
status 2, and leaves the disk as it was (issue 11): one table, one row per case. Then what must not be
an error: a damaged newest checkpoint is skipped with one line (resume and export fall back to the
newest whole one, bitwise as resuming from it directly), a kill at any moment of the final save
leaves a run that ``--resume latest`` finishes bitwise, and ``read_logs`` keeps each step once.

Commands run in-process through ``main()`` (tests/conftest.py ``fewstep``), except the killed runs,
which are real ``fewstep train`` processes killed by ``FEWSTEP_TEST_KILL_AT`` (distill/checkpoints.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fewstep.distill.checkpoints import KILL_ENV, LEFTOVERS, list_checkpoints
from fewstep.distill.runlog import append_record, read_logs
from tests.conftest import SMALL_ARCH, fewstep, run_dict

REPO = Path(__file__).resolve().parents[1]


# ---- shared material, built once ------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A very small teacher saved as a diffusers pipeline folder."""
    from fewstep.distill.config import TinyArch
    from fewstep.pipelines.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("teacher") / "pipe"
    build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=0).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 4-step run (checkpoints 2 and 4) of run_dict's config; rows copy it before harming it."""
    from fewstep.distill.loop import Trainer
    from fewstep.distill.run_config import parse_config
    from fewstep.pipelines.tiny import build_tiny_pipeline

    cfg = parse_config(run_dict(tmp_path_factory.mktemp("finished"), steps=4, checkpoint_every=2))
    Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0)).train()
    return cfg.run_dir


class Ctx(NamedTuple):
    tmp: Path
    teacher: Path
    finished: Path

    def config(self, steps: int = 4, sets: dict | None = None, **top) -> Path:
        """run_dict's config (output under tmp/runs) with ``sets`` ({"section": {...}}) merged in."""
        raw = run_dict(self.tmp, steps=steps, checkpoint_every=2)
        for section, values in (sets or {}).items():
            raw.setdefault(section, {}).update(values)
        raw.update(top)
        path = self.tmp / "c.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    def run(self) -> Path:
        """A copy of the finished run where config() writes its output."""
        run = self.tmp / "runs" / "t"
        shutil.copytree(self.finished, run)
        return run

    def teacher_copy(self) -> Path:
        out = self.tmp / "teacher"
        shutil.copytree(self.teacher, out)
        return out

    def a_file(self) -> Path:
        f = self.tmp / "a-file"
        f.write_text("not a folder\n")
        return f


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def png(path: Path, color=(200, 30, 30), size: int = 32) -> None:
    """A small valid RGB PNG (written by hand: no dependence on PIL's encoder settings)."""
    raw = b"".join(b"\0" + bytes(color) * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b""))


def image_folder(ctx: Ctx, bad: str, index: int = 0) -> Path:
    """An imagefolder dataset of 4 images, image ``index`` damaged as ``bad`` says."""
    folder = ctx.tmp / "images"
    folder.mkdir()
    lines = []
    for i in range(4):
        png(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": "a large red circle on the left, gray background"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    first = folder / f"{index}.png"
    if bad == "empty":
        first.write_bytes(b"")
    elif bad == "garbage":
        first.write_bytes(b"this is no image at all" * 10)
    else:
        truncate(first, 0.4)  # header intact: found when first decoded
    return folder


def imagefolder_config(ctx: Ctx, bad: str) -> list:
    data = {"source": "imagefolder", "path": str(image_folder(ctx, bad)), "resolution": 32}
    return ["train", ctx.config(sets={"data": data})]


def damaged_resume(ctx: Ctx, step: int, name: str, how: str = "truncate") -> list:
    ckpt = ctx.run() / "checkpoints" / f"checkpoint-{step}"
    if how == "truncate":
        truncate(ckpt / name)
    elif how == "delete":
        (ckpt / name).unlink()
    else:
        data = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    return ["train", ctx.config(), "--resume", ckpt]


def all_damaged(ctx: Ctx) -> Path:
    run = ctx.run()
    for step in (2, 4):
        truncate(run / "checkpoints" / f"checkpoint-{step}" / "random_states_0.pkl")
    return run


def teacher_with(ctx: Ctx, component_file: str) -> Path:
    folder = ctx.teacher_copy()
    truncate(folder / component_file)
    return folder


def teacher_with_recipe(ctx: Ctx, text: str) -> Path:
    folder = ctx.teacher_copy()
    (folder / "fewstep_recipe.json").write_text(text)
    return folder


def weightless_teacher(ctx: Ctx) -> Path:
    """The teacher's folder with every weight file removed: only what a config check may read."""
    folder = ctx.teacher_copy()
    for f in folder.rglob("*.safetensors"):
        f.unlink()
    return folder


def truncated_lora(ctx: Ctx) -> Path:
    from safetensors.torch import save_file

    folder = ctx.tmp / "lora"
    folder.mkdir()
    save_file({"w": torch.zeros(256)}, str(folder / "pytorch_lora_weights.safetensors"))
    truncate(folder / "pytorch_lora_weights.safetensors")
    return folder


def cached_data(ctx: Ctx, model: dict) -> dict:
    """The data section of a run that trains from a 4-image cache of procedural scenes, written by
    ``fewstep cache`` with the teacher ``model``."""
    from fewstep.pipelines.cli import main

    out = ctx.tmp / "cache"
    assert main(["cache", str(ctx.config(model=model)), "--out", str(out), "--num-samples", "4"]) == 0
    return {"data": {"source": "cache", "path": str(out)}}


def lora(targets: list[str]) -> dict:
    return {"student": {"kind": "lora", "lora_rank": 4, "lora_alpha": 4, "lora_targets": targets}}


TRAIN_SET = lambda ctx, *sets: ["train", ctx.config(), *[a for s in sets for a in ("--set", s)]]  # noqa: E731
SAMPLE = ["sample", "--pipeline", "tiny-sd", "--prompt", "a red circle", "--steps", "2"]
EVAL = ["eval", "--pipeline", "tiny-sd", "--steps", "25", "--num-images", "2"]

# (id, the command for a context (files it needs made there), what the one line must name)
ROWS: list[tuple[str, Callable[[Ctx], list], str]] = [
    # numbers through --set: key, range and value
    ("set-lr", lambda c: TRAIN_SET(c, "train.lr=-1"), "train.lr: must be"),
    ("set-steps", lambda c: TRAIN_SET(c, "train.steps=0"), "train.steps: must be >= 1"),
    ("set-nan", lambda c: TRAIN_SET(c, "train.max_grad_norm=.nan"), "train.max_grad_norm: must be a finite number"),
    ("set-limit", lambda c: TRAIN_SET(c, "train.checkpoints_total_limit=0"), "train.checkpoints_total_limit"),
    ("set-unknown", lambda c: TRAIN_SET(c, "train.lerning_rate=1"), "unknown key 'train.lerning_rate'"),
    ("set-type", lambda c: TRAIN_SET(c, "train.batch_size=four"), "train.batch_size: expected int"),
    ("set-name-path", lambda c: TRAIN_SET(c, "name=../elsewhere"), "name: '../elsewhere' must be a plain folder"),
    ("model-both", lambda c: ["train", c.config(model={"pretrained": str(c.teacher), "tiny": {}})],
     "model.pretrained and model.tiny are both set"),
    ("train-into-earlier-run", lambda c: (c.run(), ["train", c.config()])[1], "already holds a run"),
    ("cache-shard-size", lambda c: ["cache", c.config(), "--out", c.tmp / "cache", "--shard-size", "0"],
     "--shard-size: must be >= 1, got 0"),
    ("cache-other-teacher", lambda c: ["train", c.config(sets=cached_data(c, {"pretrained": str(c.teacher)}))],
     "this run's is a fresh model.tiny pipeline (train.seed 0)"),
    ("set-bad-yaml", lambda c: TRAIN_SET(c, "train.lr=["), "--set train.lr=[: the value is not valid YAML"),
    # command-line arguments
    ("sample-steps", lambda c: [*SAMPLE, "--steps", "0", "--out", c.tmp / "x.png"], "--steps: must be >= 1"),
    ("sample-images", lambda c: [*SAMPLE, "--num-images", "0", "--out", c.tmp / "x.png"], "--num-images"),
    ("sample-scheduler", lambda c: [*SAMPLE, "--scheduler", "NoSuchScheduler", "--out", c.tmp / "x.png"],
     "--scheduler NoSuchScheduler"),
    ("sample-lora", lambda c: [*SAMPLE, "--lora", c.tmp, "--out", c.tmp / "x.png"], "pytorch_lora_weights.safetensors"),
    ("sample-variant", lambda c: [*SAMPLE, "--variant", "bogus", "--out", c.tmp / "x.png"],
     "has no 'bogus' weights (no file like diffusion_pytorch_model.bogus.safetensors): drop --variant"),
    ("sample-revision-local", lambda c: [*SAMPLE, "--revision", "v2", "--out", c.tmp / "x.png"],
     "is a local folder (it holds one version: drop --revision)"),
    ("sample-lora-truncated", lambda c: [*SAMPLE, "--lora", truncated_lora(c), "--out", c.tmp / "x.png"],
     "pytorch_lora_weights.safetensors: truncated"),
    ("eval-lora-truncated", lambda c: [*EVAL, "--lora", truncated_lora(c), "--out", c.tmp / "r"],
     "pytorch_lora_weights.safetensors: truncated"),
    ("eval-steps", lambda c: [*EVAL, "--steps", "1,x"], "--steps '1,x'"),
    ("eval-images", lambda c: [*EVAL, "--num-images", "1"], "--num-images: must be >= 2"),
    ("eval-device", lambda c: [*EVAL, "--device", "tpu"], "--device tpu"),
    ("eval-prompts", lambda c: [*EVAL, "--prompts", c.tmp / "none.txt", "--out", c.tmp / "r"], "none.txt"),
    ("export-not-a-run", lambda c: ["export", c.tmp], "config.yaml missing"),
    ("export-no-checkpoint", lambda c: ["export", (lambda r: shutil.rmtree(r / "checkpoints") or r)(c.run())],
     "no finished checkpoint"),
    # missing and damaged checkpoint files (no fallback for a checkpoint named explicitly)
    ("resume-not-a-checkpoint", lambda c: ["train", c.config(), "--resume", c.tmp],
     "not a finished fewstep checkpoint"),
    ("resume-rng-truncated", lambda c: damaged_resume(c, 4, "random_states_0.pkl"),
     "checkpoint-4/random_states_0.pkl: truncated"),
    ("resume-optimizer-missing", lambda c: damaged_resume(c, 4, "optimizer.bin", "delete"),
     "checkpoint-4/optimizer.bin: missing"),
    ("resume-weights-flipped", lambda c: damaged_resume(c, 2, "student.safetensors", "flip"),
     "checkpoint-2/student.safetensors: corrupt"),
    ("resume-state-truncated", lambda c: damaged_resume(c, 4, "fewstep_state.json"),
     "checkpoint-4/fewstep_state.json: truncated"),
    ("resume-manifest-truncated", lambda c: damaged_resume(c, 4, "manifest.json"), "checkpoint-4/manifest.json"),
    ("resume-latest-all-damaged", lambda c: (all_damaged(c), ["train", c.config(), "--resume", "latest"])[1],
     "checkpoint-4/random_states_0.pkl: truncated"),
    ("export-all-damaged", lambda c: ["export", all_damaged(c)], "checkpoint-2/random_states_0.pkl: truncated"),
    # output paths under a file, or where nothing can be written
    ("output-dir-under-file", lambda c: ["train", c.config(output_dir=str(c.a_file() / "runs"))], "output_dir"),
    ("output-dir-proc", lambda c: ["train", c.config(output_dir="/proc/fewstep-test/runs")], "output_dir"),
    ("sample-out-under-file", lambda c: [*SAMPLE, "--out", c.a_file() / "x.png"], "a-file is a file, not a folder"),
    ("sample-out-is-folder", lambda c: [*SAMPLE, "--out", c.tmp], "is a folder, not a file"),
    ("sample-out-proc", lambda c: [*SAMPLE, "--out", "/proc/fewstep-test/x.png"], "--out /proc/fewstep-test/x.png"),
    ("eval-out-under-file", lambda c: [*EVAL, "--out", c.a_file() / "report"], "--out"),
    ("eval-out-proc", lambda c: [*EVAL, "--out", "/proc/fewstep-test"], "--out /proc/fewstep-test"),
    ("export-out-under-file", lambda c: ["export", c.run(), "--out", c.a_file() / "x"], "a-file is a file"),
    ("build-classifier-out", lambda c: ["build-classifier", "--config", REPO / "configs" / "classifier.yaml",
                                        "--out", c.a_file() / "classifier"], "a-file is a file"),
    # damaged images of an imagefolder dataset
    ("image-empty", lambda c: imagefolder_config(c, "empty"), "0.png is empty"),
    ("image-garbage", lambda c: imagefolder_config(c, "garbage"), "0.png is not a readable image"),
    ("image-truncated", lambda c: imagefolder_config(c, "truncated"), "0.png cannot be decoded"),
    ("sample-recipe-corrupt", lambda c: ["sample", "--pipeline", teacher_with_recipe(c, "{no"), "--prompt", "x",
                                         "--out", c.tmp / "x.png"], "fewstep_recipe.json: not a fewstep recipe"),
    # a damaged teacher file
    ("teacher-text-encoder-truncated",
     lambda c: ["train", c.config(model={"pretrained": str(teacher_with(c, "text_encoder/model.safetensors"))})],
     "text_encoder/model.safetensors: truncated"),
    ("teacher-unet-truncated-sample",
     lambda c: ["sample", "--pipeline", teacher_with(c, "unet/diffusion_pytorch_model.safetensors"), "--prompt", "x",
                "--out", c.tmp / "x.png"], "unet/diffusion_pytorch_model.safetensors: truncated"),
    # LoRA targets that match nothing: from the UNet's config alone (the teacher here has no weights)
    ("lora-targets-teacher",
     lambda c: ["train", c.config(model={"pretrained": str(weightless_teacher(c))}, **lora(["to_qq", "nothing"]))],
     "student.lora_targets: ['to_qq', 'nothing'] match no"),
    ("lora-targets-fake-score",
     lambda c: ["train", c.config(model={"pretrained": str(weightless_teacher(c))}, method={
         "name": "vsd", "fake_lora_rank": 4, "fake_lora_targets": ["nope"]}, data={"source": "prompts"})],
     "method.fake_lora_targets: ['nope'] match no"),
    ("lora-targets-tiny",
     lambda c: ["train", c.config(method={"name": "lcm", "num_ddim_timesteps": 10}, **lora(["to_qq"]))],
     "student.lora_targets: ['to_qq'] match no"),
]


def listing(root: Path) -> dict[str, tuple]:
    """Every file (size, sha256) and folder under ``root``: what a command must leave unchanged."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = ("dir",) if p.is_dir() else (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.mark.parametrize("make,needle", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, capsys, teacher, finished, make, needle):
    ctx = Ctx(tmp_path, teacher, finished)
    args = make(ctx)
    before = listing(tmp_path)
    code, err = fewstep(capsys, *args)
    errors = [line for line in err.splitlines() if line.startswith("fewstep: error:")]
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and needle in errors[0], err
    assert err.strip().splitlines()[-1] == errors[0], err  # nothing printed after it
    assert listing(tmp_path) == before  # nothing written, nothing deleted


def test_a_damaged_image_first_read_in_a_loader_worker_is_one_line(tmp_path, capsys, teacher, finished):
    """A truncated image outside the validation batch is found by a DataLoader worker mid-run: torch
    wraps the worker's traceback into the message, main still prints one line naming the file."""
    ctx = Ctx(tmp_path, teacher, finished)
    data = {"source": "imagefolder", "path": str(image_folder(ctx, "truncated", index=3)), "resolution": 32,
            "num_workers": 1}
    code, err = fewstep(capsys, "train", ctx.config(sets={"data": data}))
    errors = [line for line in err.splitlines() if line.startswith("fewstep: error:")]
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and errors[0].startswith("fewstep: error: data.path: image ") and "3.png cannot be decoded" \
        in errors[0], err


# ---- what is not an error: falling back past a damaged checkpoint --------------------------------
def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return {f"{f.name}/{k}": v for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_file(f).items()}


def assert_bitwise(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa and wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("fewstep:")]


def test_damaged_newest_checkpoint_falls_back_with_one_line_bitwise(tmp_path, capsys):
    """checkpoint-6 of a run has a truncated RNG file: --resume latest says so in one line and resumes
    from checkpoint-4, ending bitwise where resuming from checkpoint-4 directly ends; fewstep export of a
    run whose newest checkpoint lost its optimizer state exports the one before, saying so."""
    cfgs = {}
    for name in ("a", "b"):
        cfgs[name] = tmp_path / f"{name}.yaml"
        cfgs[name].write_text(yaml.safe_dump(run_dict(tmp_path / name, steps=6, checkpoint_every=2)))
    assert fewstep(capsys, "train", cfgs["a"], "--no-export")[0] == 0
    a, b = tmp_path / "a" / "runs" / "t", tmp_path / "b" / "runs" / "t"
    shutil.copytree(a, b)
    rng = a / "checkpoints" / "checkpoint-6" / "random_states_0.pkl"
    truncate(rng)

    code, err = fewstep(capsys, "train", cfgs["a"], "--set", "train.steps=8", "--resume", "latest", "--no-export")
    assert code == 0, err
    fallback = [line for line in notes(err) if "damaged checkpoint skipped" in line]
    assert len(fallback) == 1 and str(rng) in fallback[0] and "truncated" in fallback[0], err
    assert fallback[0].endswith(f"falling back to {a / 'checkpoints' / 'checkpoint-4'}")
    assert "at step 4" in err
    direct = b / "checkpoints" / "checkpoint-4"
    code, err = fewstep(capsys, "train", cfgs["b"], "--set", "train.steps=8", "--resume", direct, "--no-export")
    assert code == 0, err
    assert_bitwise(a / "checkpoints" / "checkpoint-8", b / "checkpoints" / "checkpoint-8")
    assert [r["step"] for r in read_logs(a)] == list(range(1, 9))  # the attempt's steps 5-6 once

    (a / "checkpoints" / "checkpoint-8" / "optimizer.bin").unlink()
    code, err = fewstep(capsys, "export", a)
    assert code == 0, err
    assert [line for line in notes(err) if "damaged checkpoint skipped" in line][0].endswith(
        f"falling back to {a / 'checkpoints' / 'checkpoint-6'}"), err
    assert "exported step 6" in err and (a / "export" / "samples.png").is_file()


# ---- a kill at any moment of the final save -------------------------------------------------------
# moment -> (the checkpoint resume picks, what the checkpoints folder holds right after the kill)
MOMENTS = {"state": (4, ["checkpoint-2", "checkpoint-4", ".tmp-checkpoint-6"]),
           "manifest": (4, ["checkpoint-2", "checkpoint-4", ".tmp-checkpoint-6"]),
           "rename": (4, ["checkpoint-2", "checkpoint-4", ".tmp-checkpoint-6+manifest"]),
           "prune": (6, ["checkpoint-2", "checkpoint-4", "checkpoint-6"]),
           "pruning": (6, [".del-checkpoint-2", "checkpoint-4", "checkpoint-6"])}


def after_kill(checkpoints: Path) -> list[str]:
    """The folder names (hidden ones without their random suffix; a temporary checkpoint that has its
    manifest marked +manifest)."""
    out = []
    for p in sorted(checkpoints.iterdir()):
        name = p.name.rsplit(".", 1)[0] if p.name.startswith(LEFTOVERS) else p.name
        if name.startswith(".tmp-") and (p / "manifest.json").is_file():
            name += "+manifest"
        out.append(name)
    return sorted(out)


@pytest.mark.slow
def test_a_kill_during_the_final_save_resumes_to_the_same_weights(tmp_path, capsys):
    """A real ``fewstep train`` (6 steps, checkpoints every 2, keeping 2) is killed with SIGKILL at each
    moment of its final save and pruning; ``--resume latest`` then picks the newest whole checkpoint,
    finishes, and its checkpoint-6 equals an uninterrupted run's bitwise, with no leftovers, the two
    newest checkpoints kept and each step logged once."""
    def config(where: Path) -> Path:
        path = where / "c.yaml"
        where.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(run_dict(where, steps=6, checkpoint_every=2, checkpoints_total_limit=2)))
        return path

    ref = config(tmp_path / "ref")
    assert fewstep(capsys, "train", ref, "--no-export")[0] == 0
    ref_ckpt = tmp_path / "ref" / "runs" / "t" / "checkpoints" / "checkpoint-6"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for moment, (picked, killed) in MOMENTS.items():
        where = tmp_path / moment
        cfg = config(where)
        proc = subprocess.run([sys.executable, "-m", "fewstep.pipelines.cli", "train", str(cfg), "--no-export"],
                              env={**env, KILL_ENV: f"{moment}:6"}, cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == -9, (moment, proc.stderr[-2000:])
        run = where / "runs" / "t"
        assert after_kill(run / "checkpoints") == sorted(killed), moment
        assert [s for s, _ in list_checkpoints(run)][-1] == picked, moment
        code, err = fewstep(capsys, "train", cfg, "--resume", "latest", "--no-export")
        assert code == 0, (moment, err)
        assert f"checkpoint-{picked} at step {picked}" in err and "damaged checkpoint" not in err, (moment, err)
        assert_bitwise(run / "checkpoints" / "checkpoint-6", ref_ckpt)
        left = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert left == ["checkpoint-4", "checkpoint-6"], (moment, left)  # no hidden leftovers either
        assert not any(p.name.startswith(LEFTOVERS) for p in (run / "checkpoints").iterdir())
        assert [r["step"] for r in read_logs(run)] == list(range(1, 7)), moment


# ---- the log reader -----------------------------------------------------------------------------
def test_read_logs_keeps_each_step_of_the_latest_attempt_once(tmp_path):
    log = tmp_path / "logs.jsonl"
    for step in range(1, 6):  # the first attempt reaches step 5, its last checkpoint was at 3
        append_record(log, {"step": step, "loss": step})
    append_record(log, {"step": 5, "validation": {"fid": 1.0}})
    with open(log, "a") as f:
        f.write('{"step": 6, "lo')  # torn by the kill
    append_record(log, {"event": "resumed", "step": 3, "from": "runs/t/checkpoints/checkpoint-3"})
    for step in range(4, 7):
        append_record(log, {"step": step, "loss": 10 * step})
    append_record(log, {"event": "resumed", "step": 6, "from": "runs/t/checkpoints/checkpoint-6"})  # nothing redone
    got = read_logs(tmp_path)
    assert [(r["step"], r.get("loss")) for r in got] == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50), (6, 60)]
    assert not any(r.get("event") == "resumed" for r in got)
    append_record(log, {"step": 6, "validation": {"fid": 2.0}})  # a step redone after the marker replaces it
    assert [(r["step"], "validation" in r) for r in read_logs(log)][-2:] == [(5, False), (6, True)]
    # the torn line became a line of its own, not glued to the marker
    assert sum(1 for line in log.read_text().splitlines() if line.startswith('{"event": "resumed"')) == 2

    append_record(log, {"step": 7, "loss": float("nan")})  # json writes NaN; only strict readers refuse it
    assert read_logs(log)[-1]["step"] == 7
    with pytest.raises(ValueError, match="logs.jsonl:.*non-finite NaN"):
        read_logs(log, strict=True)
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="logs.jsonl:2: not a JSON record"):
        read_logs(log)


def test_gan_images_at_another_size_fail_before_the_teacher_loads(tmp_path, capsys, teacher, finished, monkeypatch):
    """DMD2's GAN term needs real images at the size the generator makes (the teacher UNet's
    sample_size x the VAE factor): an image folder at another data.resolution is one line naming it,
    read from the teacher's config files before any weight loads (loading the teacher fails this test)."""
    import fewstep.pipelines.cli as cli
    from diffusers import StableDiffusionPipeline

    ctx = Ctx(tmp_path, teacher, finished)
    pipe = StableDiffusionPipeline.from_pretrained(teacher)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor  # diffusers' own reading of the folder
    folder = ctx.tmp / "images"
    folder.mkdir()
    for i in range(2):
        png(folder / f"{i}.png", size=native)
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": "a red circle"}) + "\n"
                                                   for i in range(2)))

    def no_teacher(cfg):
        raise AssertionError("the teacher was loaded before the size check")

    monkeypatch.setattr(cli, "_load_pipeline_for", no_teacher)
    for resolution in (native // 2, 2 * native):
        sets = {"method": {"name": "dmd", "gan_weight": 0.01}, "model": {"tiny": None, "pretrained": str(teacher)},
                "data": {"source": "imagefolder", "path": str(folder), "resolution": resolution}}
        config = ctx.config(sets=sets)
        before = listing(tmp_path)
        code, err = fewstep(capsys, "train", config)
        errors = [line for line in err.splitlines() if line.startswith("fewstep: error:")]
        assert code == 2 and "Traceback" not in err and len(errors) == 1, err
        assert errors[0] == (f"fewstep: error: data.resolution: the GAN term (method.gan_weight) needs real images at "
                             f"the generator's size {native} px (the teacher UNet's sample_size "
                             f"{pipe.unet.config.sample_size} x {pipe.vae_scale_factor}); the data gives {resolution} px")
        assert listing(tmp_path) == before
    # at the native size the run gets past the check, as far as loading the teacher
    sets["data"]["resolution"] = native
    with pytest.raises(AssertionError, match="the teacher was loaded"):
        fewstep(capsys, "train", ctx.config(sets=sets))
