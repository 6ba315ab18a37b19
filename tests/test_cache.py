"""``fewstep cache`` and data.source: cache: shards written atomically and resumed after a kill, settings
that do not match refused, and training from the cache giving the losses of training from the images."""
import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load

from fewstep.distill.config import ConfigError
from fewstep.distill.data.cache import CacheDataset, CachedCaption, LatentMoments, shard_count, shard_name
from fewstep.distill.data.procedural import ProceduralDataset
from fewstep.distill.runlog import read_logs
from fewstep.pipelines import cache as C
from tests.conftest import fewstep, run_dict
from tests.test_cli import one_clear_line

N_IMAGES = 8


def image_folder(root):
    """8 procedural scenes (captions the tiny tokenizer knows) as an image folder with metadata.jsonl."""
    root.mkdir()
    lines = []
    for i in range(N_IMAGES):
        item = ProceduralDataset(7)[i]
        Image.fromarray(item["image"].permute(1, 2, 0).numpy()).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": item["caption"]}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def metadata(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def config(tmp_path, method="denoise", model=None, **data):
    raw = run_dict(tmp_path, method=method, steps=3, checkpoint_every=0)
    raw["model"] = model or raw["model"]
    if method == "lcm":
        raw["student"] = {"kind": "lora", "lora_rank": 4, "lora_alpha": 4}
    raw["data"] = {"source": "imagefolder", "path": str(image_folder(tmp_path / "images")), **data}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cache_is_resumed_after_a_kill_and_verified(tmp_path, capsys, monkeypatch):
    cfg, out = config(tmp_path), tmp_path / "cache"
    real = C.encode_unit

    def killed_at_second_shard(models, unit, *args):
        if unit.index == 1:
            raise KeyboardInterrupt  # what a kill looks like from inside the process
        return real(models, unit, *args)

    monkeypatch.setattr(C, "encode_unit", killed_at_second_shard)
    with pytest.raises(KeyboardInterrupt):
        fewstep(capsys, "cache", cfg, "--out", out, "--shard-size", 3)
    assert sorted(p.name for p in out.iterdir()) == ["cache.json", shard_name(0)]  # no half-written shard
    with pytest.raises(ConfigError, match=r"data.path: cache .* is unfinished or damaged \(2 of 3 shards missing"):
        CacheDataset(out)

    monkeypatch.setattr(C, "encode_unit", real)
    first = (out / shard_name(0)).stat()
    code, err = fewstep(capsys, "cache", cfg, "--out", out, "--shard-size", 3)
    assert code == 0 and "2 shard(s) written, 1 kept" in err, err
    assert (out / shard_name(0)).stat().st_mtime_ns == first.st_mtime_ns  # kept, not redone
    assert [shard_count(out / shard_name(k)) for k in range(3)] == [3, 3, 2]

    # a damaged shard (truncated copy) is found and redone, with the same content
    whole = (out / shard_name(1)).read_bytes()
    before, metadata_before = load(whole), metadata(out / shard_name(1))["captions"]
    (out / shard_name(1)).write_bytes(whole[:-100])
    assert shard_count(out / shard_name(1)) is None
    code, err = fewstep(capsys, "cache", cfg, "--out", out, "--shard-size", 3)
    assert code == 0 and "1 shard(s) written, 2 kept" in err, err
    after = load((out / shard_name(1)).read_bytes())
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert metadata(out / shard_name(1))["captions"] == metadata_before

    ds = CacheDataset(out)
    assert len(ds) == N_IMAGES
    item = ds[7]
    assert isinstance(item["image"], LatentMoments) and isinstance(item["caption"], CachedCaption)
    assert item["caption"] == json.loads((tmp_path / "images" / "metadata.jsonl").read_text().splitlines()[7])["text"]
    assert item["image"].moments.shape[0] == 2 * 4 and item["caption"].embedding.ndim == 2


def test_other_settings_and_sources_are_refused_in_one_line(tmp_path, capsys):
    cfg, out = config(tmp_path), tmp_path / "cache"
    assert fewstep(capsys, "cache", cfg, "--out", out, "--shard-size", 4)[0] == 0
    one_clear_line(fewstep(capsys, "cache", cfg, "--out", out, "--shard-size", 3),
                   f"--out {out}: holds a cache made with other settings (num_shards, shard_size differ)")
    one_clear_line(fewstep(capsys, "cache", cfg, "--out", tmp_path / "p", "--set", "data.source=procedural"),
                   "--num-samples: data.source 'procedural' is endless")
    one_clear_line(fewstep(capsys, "cache", cfg, "--out", tmp_path / "p", "--set", "data.source=prompts"),
                   "data.source: 'prompts' has no images to cache")
    one_clear_line(fewstep(capsys, "train", cfg, "--set", "data.source=cache", "--set", f"data.path={tmp_path}"),
                   f"data.path: {tmp_path} is not a fewstep cache (cache.json missing")


def train_losses(capsys, tmp_path, cfg, name, *overrides) -> list[float]:
    code, err = fewstep(capsys, "train", cfg, "--no-export", "--set", f"name={name}", *overrides)
    assert code == 0, err
    records = [r for r in read_logs(tmp_path / "runs" / name) if "step" in r and any(k.endswith("/loss") for k in r)]
    return [v for r in records for k, v in sorted(r.items()) if k.endswith("/loss")]


@pytest.mark.parametrize("method", ["denoise", "lcm"])
def test_training_from_the_cache_gives_the_losses_of_the_images(tmp_path, capsys, monkeypatch, method):
    """denoise trains its text encoder (captions are encoded afresh, latents come from the cache); lcm's
    LoRA student leaves it frozen, so the cached embeddings stand in for it."""
    from fewstep.distill.modelset import ModelSet

    cfg, out = config(tmp_path, method), tmp_path / "cache"
    assert fewstep(capsys, "cache", cfg, "--out", out, "--shard-size", 5)[0] == 0
    from_images = train_losses(capsys, tmp_path, cfg, "images")
    used, real = [], ModelSet._with_cached
    monkeypatch.setattr(ModelSet, "_with_cached", lambda self, captions: used.append(1) or real(self, captions))
    from_cache = train_losses(capsys, tmp_path, cfg, "cached", "--set", "data.source=cache",
                              "--set", f"data.path={out}")
    assert bool(used) == (method == "lcm")
    assert len(from_images) == 3 and len(from_cache) == 3
    assert np.allclose(from_cache, from_images, rtol=1e-4, atol=1e-6), (from_images, from_cache)
    # the check can fail: another learning rate gives other losses after the first step (another train.seed
    # would draw other noise, but it also builds another tiny teacher, whose cache this is not: refused)
    other = train_losses(capsys, tmp_path, cfg, "other", "--set", "data.source=cache", "--set", f"data.path={out}",
                         "--set", "train.lr=0.05")
    assert not np.allclose(other, from_images, rtol=1e-4, atol=1e-6)


def test_training_refuses_a_cache_of_another_teacher_before_any_weight_loads(tmp_path, capsys, monkeypatch):
    """cache.json records the teacher with its revision and variant. A run of another teacher, revision or
    variant, or at another resolution, and a cache written before the record (a bare name), stop in
    preflight with one line naming data.path and both teachers; the cache's own teacher trains from it."""
    import huggingface_hub

    from fewstep.distill.config import TinyArch
    from fewstep.pipelines import cli
    from fewstep.pipelines.tiny import build_tiny_pipeline
    from tests.conftest import SMALL_ARCH
    from tests.test_hub_teacher import MAIN, REPO_ID, V2, cache_snapshot

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache_snapshot(hub, REPO_ID, MAIN, build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=0))
    half = build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=1).to(torch.float16)
    cache_snapshot(hub, REPO_ID, V2, half, refs=("v2",), variant="fp16")
    cfg = config(tmp_path, model={"pretrained": REPO_ID, "revision": "v2", "variant": "fp16"})
    out = tmp_path / "cache"
    assert fewstep(capsys, "cache", cfg, "--out", out, "--shard-size", 4)[0] == 0
    manifest = json.loads((out / "cache.json").read_text())
    assert manifest["teacher"] == {"pretrained": REPO_ID, "revision": "v2", "variant": "fp16"}
    cached = ["--no-export", "--set", "data.source=cache", "--set", f"data.path={out}"]
    code, err = fewstep(capsys, "train", cfg, *cached, "--set", "name=same")
    assert code == 0, err  # the teacher that made it

    monkeypatch.setattr(cli, "_load_pipeline_for", lambda cfg: pytest.fail("the teacher was loaded"))
    for sets, needle in (
            (["model.revision=main"], f"data.path: cache {out} was made with teacher '{REPO_ID}' (revision 'v2', "
                                      f"variant 'fp16'), this run's is '{REPO_ID}' (revision 'main', variant 'fp16')"),
            (["model.variant=null"], f"this run's is '{REPO_ID}' (revision 'v2') (its latents and text embeddings "
                                     "are another VAE's and text encoder's); rebuild it with `fewstep cache CONFIG "
                                     f"--out {out}` for this run's model"),
            (["model.pretrained=null", "model.revision=null", "model.variant=null", f"model.tiny={SMALL_ARCH}"],
             "this run's is a fresh model.tiny pipeline (train.seed 0)"),
            (["data.resolution=16"], f"data.resolution: 16, but cache {out} (data.path) holds images resized to "
                                     "32 px; set data.resolution=32")):
        one_clear_line(fewstep(capsys, "train", cfg, *cached, *[a for s in sets for a in ("--set", s)]), needle)
    (out / "cache.json").write_text(json.dumps({**manifest, "teacher": REPO_ID}))  # as an older fewstep wrote it
    one_clear_line(fewstep(capsys, "train", cfg, *cached),
                   f"data.path: cache {out} records its teacher '{REPO_ID}' without revision and variant (written "
                   "by an older fewstep), so it may be another revision's; rebuild it")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["same"]  # the refused runs wrote nothing
