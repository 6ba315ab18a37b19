"""Teachers from a hub id (issue 12): ``model.pretrained: org/name`` loads from the local Hugging Face
cache without network, ``model.revision`` picks a snapshot and ``model.variant`` picks ``*.fp16.*`` weight
files (also in ``fewstep eval`` and ``sample``: a run's, a LoRA export's own, or ``--revision`` /
``--variant``); an id missing from the cache offline is one line naming it and how to make it local, decided
from the cache before any weight is read.

The cache is built the way huggingface_hub lays it out (huggingface_hub 2.x, ``file_download.py``):
``models--{org}--{name}/blobs/{sha256}`` holds each file once, ``snapshots/{commit}/{path}`` is a
relative symlink to its blob, ``refs/{branch}`` holds the commit a branch resolves to. The last test
checks that plain diffusers resolves this layout by id too, in a fresh interpreter with ``HF_HOME`` set.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch

from fewstep.distill.config import ConfigError, EvalConfig, TinyArch
from fewstep.distill.run_config import load_config, parse_config
from fewstep.pipelines.errors import TeacherError
from fewstep.pipelines.teacher import hub_snapshot, load_pipeline, locate, resolve
from fewstep.pipelines.tiny import build_tiny_pipeline
from tests.conftest import SMALL_ARCH, fewstep, run_dict

REPO_ID = "someorg/tiny-sd"
MAIN, V2 = "a" * 40, "b" * 40  # commit hashes of two snapshots


def cache_snapshot(hub: Path, repo_id: str, commit: str, pipe, refs: tuple[str, ...] = ("main",), **save) -> Path:
    """``pipe.save_pretrained(**save)`` as the cached snapshot ``commit`` of ``repo_id`` under ``hub``."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    staging, snap = repo / "staging", repo / "snapshots" / commit
    pipe.save_pretrained(staging, safe_serialization=True, **save)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in staging.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.move(f, blob)
        link = snap / f.relative_to(staging)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    shutil.rmtree(staging)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snap


def unet_state(pipe) -> dict:
    return {k: v.float() for k, v in pipe.unet.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pipes():
    """Two very small pipelines with different weights (seeds 0 and 1)."""
    return [build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=s) for s in (0, 1)]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache that huggingface_hub reads (``HF_HUB_CACHE``), offline as on this machine."""
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return folder


# ---- a cached id loads offline; revision and variant pick files ------------------------------------------
def test_cached_hub_id_loads_offline_from_its_snapshot(hub, pipes):
    snap = cache_snapshot(hub, REPO_ID, MAIN, pipes[0])
    assert hub_snapshot(REPO_ID) == snap and resolve(REPO_ID) == str(snap) and locate(REPO_ID) == str(snap)
    pipe = load_pipeline(REPO_ID)
    assert same_weights(unet_state(pipe), unet_state(pipes[0]))
    assert pipe.unet.dtype == torch.float32


def test_revision_selects_a_snapshot_by_branch_or_commit(hub, pipes):
    cache_snapshot(hub, REPO_ID, MAIN, pipes[0])
    cache_snapshot(hub, REPO_ID, V2, pipes[1], refs=("v2",))
    for revision, want in ((None, 0), ("main", 0), ("v2", 1), (V2, 1), (MAIN, 0)):
        assert same_weights(unet_state(load_pipeline(REPO_ID, revision=revision)), unet_state(pipes[want])), revision
    with pytest.raises(TeacherError, match=r"'someorg/tiny-sd' at revision 'v3' .*hf download someorg/tiny-sd "
                                           r"--revision v3"):
        locate(REPO_ID, revision="v3")


def test_variant_selects_the_fp16_files(hub, pipes):
    # one snapshot holding seed-0 weights as fp16 variant files and seed-1 weights as the plain files
    half = build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=0).to(torch.float16)
    snap = cache_snapshot(hub, REPO_ID, MAIN, half, variant="fp16")
    staging = hub / "plain"
    pipes[1].save_pretrained(staging, safe_serialization=True)
    for f in staging.rglob("*.safetensors"):
        shutil.copy(f, snap / f.relative_to(staging))
    assert sorted(p.name for p in (snap / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
    loaded = load_pipeline(REPO_ID, variant="fp16")
    assert loaded.unet.dtype == torch.float32  # upcast: the loop trains in float32
    assert same_weights(unet_state(loaded), unet_state(half))
    assert not same_weights(unet_state(loaded), unet_state(pipes[0]))  # the fp16 rounding is really there
    assert same_weights(unet_state(load_pipeline(REPO_ID)), unet_state(pipes[1]))
    with pytest.raises(TeacherError, match=r"^teacher 'someorg/tiny-sd' is in the Hugging Face cache without its bf16 "
                                           r"UNet weights; .* HF_HUB_OFFLINE is set: .*`hf download someorg/tiny-sd`"):
        load_pipeline(REPO_ID, variant="bf16")
    fp16_only = cache_snapshot(hub, "someorg/fp16-only", MAIN, half, variant="fp16")  # as `variant=fp16` downloads
    assert locate("someorg/fp16-only", variant="fp16") == str(fp16_only)
    with pytest.raises(TeacherError, match=r"without its plain \(non-variant\) UNet weights"):
        locate("someorg/fp16-only")


def test_online_a_cache_without_the_asked_weights_goes_to_the_hub(hub, monkeypatch):
    """diffusers downloads only what the cache lacks; fewstep must not stop at a partial snapshot online."""
    half = build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=0).to(torch.float16)
    snap = cache_snapshot(hub, REPO_ID, MAIN, half, variant="fp16")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert locate(REPO_ID, variant="fp16") == str(snap)
    assert locate(REPO_ID) == REPO_ID and locate("someorg/uncached") == "someorg/uncached"


def test_run_config_passes_revision_and_variant_to_the_teacher(hub, pipes, tmp_path):
    from fewstep.pipelines.cli import _load_pipeline_for

    cache_snapshot(hub, REPO_ID, MAIN, pipes[0])
    half = build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=1).to(torch.float16)
    snap = cache_snapshot(hub, REPO_ID, V2, half, refs=("v2",), variant="fp16")
    raw = run_dict(tmp_path)
    raw["model"] = {"pretrained": REPO_ID, "revision": "v2", "variant": "fp16"}
    pipe = _load_pipeline_for(parse_config(raw))
    assert same_weights(unet_state(pipe), unet_state(half)) and pipe.unet.dtype == torch.float32
    assert (snap / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_symlink()


# ---- eval and sample load the revision and variant a run was trained on ---------------------------------
@pytest.fixture
def lora_run(hub, pipes, tmp_path):
    """A run whose teacher is REPO_ID at revision v2, variant fp16 (seed-1 weights; main holds seed 0), with
    a LoRA export on that base written by the exporter training uses. Returns (run folder, the v2 weights)."""
    from peft import LoraConfig

    from fewstep.distill.config import save_config, to_dict
    from fewstep.distill.sampling import Recipe
    from fewstep.pipelines.export import export_lora
    from fewstep.pipelines.teacher import load_teacher

    cache_snapshot(hub, REPO_ID, MAIN, pipes[0])
    half = build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=1).to(torch.float16)
    cache_snapshot(hub, REPO_ID, V2, half, refs=("v2",), variant="fp16")
    raw = run_dict(tmp_path, method="lcm")
    raw["model"] = {"pretrained": REPO_ID, "revision": "v2", "variant": "fp16"}
    raw["student"] = {"kind": "lora", "lora_rank": 4, "lora_alpha": 4}
    cfg = parse_config(raw)
    base = load_teacher(cfg.model)
    base.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    cfg.run_dir.mkdir(parents=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    export_lora(base, Recipe("LCMScheduler", {}, 2, 1.0, trained_steps=[1, 2]), cfg.run_dir / "export", title="t",
                base_model=REPO_ID, base_unet=base.unet, config=to_dict(cfg))
    return cfg.run_dir, unet_state(half)


def test_eval_loads_teacher_and_lora_base_at_the_runs_revision_and_variant(lora_run, pipes):
    from fewstep.pipelines import evaluate as ev
    from fewstep.pipelines.errors import LoraBaseError

    run, v2 = lora_run
    from_run = ev.run_entries(run).entries
    from_lora = ev.build_entries(REPO_ID, EvalConfig(steps=[1]), lora=str(run / "export"), teacher=REPO_ID)
    for entries in (from_run, from_lora):  # eval --run, and eval --pipeline ID --lora EXPORT --teacher ID
        assert [(e.teacher, e.pipeline, e.revision, e.variant) for e in entries] == [
            (True, REPO_ID, "v2", "fp16"), (False, REPO_ID, "v2", "fp16")]
        ev.check_entries(entries, ev.SweepSpec(num_images=2))
        teacher, student = (ev.load_entry(e, "cpu") for e in entries)  # the LoRA's base fingerprint matches
        assert same_weights(unet_state(teacher), v2) and not same_weights(unet_state(teacher), unet_state(pipes[0]))
        # the LoRA (B = 0 at peft's init) was fused into the v2 base: the v2 weights, and no peft layer left
        assert same_weights(unet_state(student), v2)
        assert not [m for m in student.unet.modules() if type(m).__module__.startswith("peft.")]
    # the check can fail: the same export on main's weights is another base
    main = ev.student_entry(REPO_ID, lora=str(run / "export"))
    with pytest.raises(LoraBaseError, match="was trained on base 'someorg/tiny-sd'"):
        ev.load_entry(main, "cpu")


def test_sample_loads_the_revision_and_variant_given_or_trained_on(lora_run, pipes, tmp_path, capsys, monkeypatch):
    import fewstep.pipelines.teacher as T

    run, v2 = lora_run
    loaded, real = [], T.load_pipeline
    monkeypatch.setattr(T, "load_pipeline", lambda *a, **k: loaded.append((a, real(*a, **k))) or loaded[-1][1])
    sample = ["sample", "--pipeline", REPO_ID, "--prompt", "a red circle", "--steps", "1", "--out", tmp_path / "x.png"]
    for flags, weights in ((["--revision", "v2", "--variant", "fp16"], v2), ([], unet_state(pipes[0])),
                           (["--revision", V2, "--variant", "fp16"], v2)):
        code, err = fewstep(capsys, *sample, *flags)
        assert code == 0, err
        assert same_weights(unet_state(loaded[-1][1]), weights), flags
    code, err = fewstep(capsys, *sample, "--lora", run / "export")  # the LoRA's own run config says v2, fp16
    assert code == 0 and "LCMScheduler, 1 steps" in err, err
    assert loaded[-1][0] == (REPO_ID, "v2", "fp16")


# ---- one line, before any weight is read ---------------------------------------------------------------
def test_uncached_id_offline_is_one_line_naming_it_and_the_fix(hub, tmp_path, capsys, monkeypatch):
    import diffusers

    def no_load(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", no_load)
    raw = run_dict(tmp_path)
    raw["model"] = {"pretrained": "someorg/somemodel"}
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(raw))
    for args in (["train", config], ["sample", "--pipeline", "someorg/somemodel", "--prompt", "x",
                                     "--out", tmp_path / "x.png"]):
        code, err = fewstep(capsys, *args)
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("fewstep: error: teacher 'someorg/somemodel' is no local folder and not in the "
                              f"Hugging Face cache ({hub}) and HF_HUB_OFFLINE is set: ")
        assert "`hf download someorg/somemodel`" in err and "point model.pretrained at DIR" in err
    assert not (tmp_path / "runs").exists()


def test_failed_download_online_is_one_line(hub, monkeypatch):
    """Online, an uncached id goes to diffusers; what it raises (an OSError wrapping the hub's error, as
    diffusers' pipeline_utils does) becomes one line naming the id and the cause."""
    import diffusers
    import httpx2 as httpx  # huggingface_hub 2.x ships its own httpx fork

    cause: list[BaseException] = []

    def fail(*args, **kwargs):
        try:
            raise cause[0]
        except Exception as e:
            raise OSError("Cannot load model someorg/somemodel: model is not cached locally and an error occurred\n"
                          "Please check out the root cause in the stacktrace above.") from e

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", fail)
    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/someorg/x"))
    for error, match in ((httpx.ConnectError("[Errno -2] Name or service not known"),
                          r"^could not download teacher 'someorg/somemodel': the Hugging Face hub could not be "
                          r"reached \(ConnectError: \[Errno -2\] Name or service not known\); on a machine with "
                          r"internet run `hf download someorg/somemodel`"),
                         (huggingface_hub.errors.RepositoryNotFoundError("404", response=response),
                          r"^the hub has no repo 'someorg/somemodel' that you may read"),
                         (huggingface_hub.errors.RevisionNotFoundError("404", response=response),
                          r"^the hub repo 'someorg/somemodel' has no revision 'v9'")):
        cause[:] = [error]
        with pytest.raises(TeacherError, match=match) as info:
            load_pipeline("someorg/somemodel", revision="v9" if "revision" in match else None)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("model, match", [
    ({"pretrained": "a/b/c"}, r"'a/b/c' is no local folder and no hub id"),
    ({"pretrained": "LOCAL", "revision": "v2"}, r"revision 'v2' is for a hub id, but .* is a local folder"),
    ({"pretrained": "LOCAL", "variant": "fp16"}, r"unet has no 'fp16' weights"),
])
def test_teacher_misfits_are_one_teacher_error(hub, pipes, tmp_path, model, match):
    local = tmp_path / "local"
    pipes[0].save_pretrained(local, safe_serialization=True)
    model = {k: str(local) if v == "LOCAL" else v for k, v in model.items()}
    with pytest.raises(TeacherError, match=match):
        locate(model["pretrained"], model.get("revision"), model.get("variant"))


@pytest.mark.parametrize("model, match", [
    ({"tiny": SMALL_ARCH, "revision": "v2"}, r"model.revision: set without model.pretrained"),
    ({"tiny": SMALL_ARCH, "variant": "fp16"}, r"model.variant: set without model.pretrained"),
    ({"pretrained": REPO_ID, "variant": " "}, r"model.variant: empty"),
])
def test_revision_and_variant_config_errors(tmp_path, model, match):
    raw = run_dict(tmp_path)
    raw["model"] = model
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_shipped_sd15_configs_take_revision_and_variant():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "sd15" / "lcm_lora.yaml",
                      ["model.revision=main", "model.variant=fp16"])
    assert (cfg.model.revision, cfg.model.variant) == ("main", "fp16")


# ---- the same layout through real environment variables and plain diffusers ------------------------------
CHILD = r"""
import sys, torch, diffusers
from fewstep.pipelines.teacher import load_pipeline
ours = load_pipeline(sys.argv[1], revision=sys.argv[2])
plain = diffusers.StableDiffusionPipeline.from_pretrained(sys.argv[1], revision=sys.argv[2], safety_checker=None)
a, b = ours.unet.state_dict(), plain.unet.state_dict()
print(float(sum(v.double().sum() for v in a.values())), all(torch.equal(a[k], b[k]) for k in a))
"""


@pytest.mark.slow
def test_hf_home_offline_in_a_fresh_interpreter_matches_plain_diffusers(tmp_path, pipes):
    cache_snapshot(tmp_path / "home" / "hub", REPO_ID, V2, pipes[1], refs=("v2",))
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", CHILD, REPO_ID, "v2"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    total, equal = out.stdout.split()
    assert equal == "True"
    assert float(total) == pytest.approx(float(sum(v.double().sum() for v in pipes[1].unet.state_dict().values())))
