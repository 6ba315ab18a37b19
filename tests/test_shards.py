"""WebDataset shards (data.source: webdataset): real tar files in a temp dir; the split per rank and
worker partitions every epoch, filters, the bounded stop when every sample is rejected, corrupt
samples counted up to data.max_corrupt_fraction, and the loop's use of the stream (also 2 processes).

``python -m tests.test_shards DIR`` (under torchrun) is the per-rank half of the 2-process test."""
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fewstep.distill.config import ConfigError, DataConfig
from fewstep.distill.data import build_dataset, collate, take_corrupt
from fewstep.distill.data import shards as S
from fewstep.distill.runlog import read_logs
from tests.conftest import fewstep, run_dict

CAPTION = "a small red circle on the left, gray background"  # a caption of the tiny tokenizer's vocabulary


def png(w: int, h: int, value: int = 120) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path: Path, samples: list[dict]) -> Path:
    """A WebDataset tar: one member per (sample key, extension)."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext, data in s.items():
                if ext == "key":
                    continue
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def make_shards(root: Path, n_shards: int, per_shard: int, size=(12, 12), ext="png", bad=frozenset()) -> str:
    """``n_shards`` tars of ``per_shard`` samples with unique captions ``s{shard}-{i}``; keys in ``bad``
    hold bytes that are not an image. Returns the brace pattern."""
    for k in range(n_shards):
        samples = [{"key": f"s{k}_{i:04d}", ext: b"not an image" if f"s{k}_{i:04d}" in bad else png(*size),
                    "txt": f"s{k}-{i}"} for i in range(per_shard)]
        write_shard(root / f"shard-{k:04d}.tar", samples)
    return str(root / f"shard-{{0000..{n_shards - 1:04d}}}.tar")


def data(pattern: str, **kw) -> DataConfig:
    return DataConfig(source="webdataset", path=pattern, resolution=8, **{"shuffle_buffer": 0, **kw})


def epoch(cfg: DataConfig, rank: int = 0, world: int = 1, workers: int = 0) -> list[str]:
    """Captions one reader group (a rank, with its DataLoader workers) yields in one epoch."""
    ds = S.ShardDataset(cfg, epochs=1, rank=rank, world_size=world)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    return [item["caption"] for item in loader]


def test_brace_pattern_items_are_cropped_captioned_images(tmp_path):
    pattern = make_shards(tmp_path, 3, 4, size=(20, 12))
    items = list(S.ShardDataset(data(pattern), epochs=1, rank=0, world_size=1))
    assert sorted(it["caption"] for it in items) == sorted(f"s{k}-{i}" for k in range(3) for i in range(4))
    assert all(it["image"].dtype == torch.uint8 and tuple(it["image"].shape) == (3, 8, 8) for it in items)
    batch = collate(items[:4])
    assert batch["pixels"].shape == (4, 3, 8, 8) and take_corrupt(batch) == 0 and "corrupt" not in batch


@pytest.mark.parametrize("n_shards, per_shard, workers", [(5, 3, 2), (2, 7, 2), (4, 2, 0)])
def test_ranks_and_workers_partition_each_epoch(tmp_path, n_shards, per_shard, workers):
    """2 ranks x workers: every sample exactly once per epoch, whether shards are dealt out (at least as
    many shards as readers) or samples are (fewer shards), and with a shuffle buffer."""
    pattern = make_shards(tmp_path, n_shards, per_shard)
    everything = sorted(f"s{k}-{i}" for k in range(n_shards) for i in range(per_shard))
    cfg = data(pattern, shuffle_buffer=4)
    seen = [epoch(cfg, rank, 2, workers) for rank in (0, 1)]
    assert seen[0] and seen[1]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == everything
    # the next epoch reshuffles shard order but still partitions
    both = [c for rank in (0, 1) for c in
            [it["caption"] for it in S.ShardDataset(cfg, epochs=2, rank=rank, world_size=2)]]
    assert sorted(both) == sorted(everything * 2)


def test_filters_keep_only_matching_images(tmp_path):
    sizes = {"a": (20, 20), "b": (10, 10), "c": (40, 10)}
    write_shard(tmp_path / "x.tar", [{"key": k, "png": png(*wh), "txt": k} for k, wh in sizes.items()])
    def kept(**kw):
        return {it["caption"] for it in S.ShardDataset(data(str(tmp_path / "x.tar"), **kw), epochs=1, rank=0,
                                                       world_size=1)}

    assert kept() == {"a", "b", "c"}
    assert kept(min_size=15) == {"a"}  # c's short side is 10
    assert kept(min_size=10) == {"a", "b", "c"}
    assert kept(max_aspect=2.0) == {"a", "b"}
    assert kept(min_size=12, max_aspect=5.0) == {"a"}


@pytest.mark.parametrize("kw, key", [({"image_key": "jpg;webp"}, "data.image_key"),
                                     ({"caption_key": "caption"}, "data.caption_key"),
                                     ({"min_size": 1000}, "data.min_size"),
                                     ({"max_aspect": 1.0}, "data.max_aspect")])
def test_every_sample_rejected_stops_naming_key_and_shard(tmp_path, kw, key):
    pattern = make_shards(tmp_path, 2, 3, size=(12, 10))
    # before the teacher: build_dataset reads until the first accepted sample
    with pytest.raises(ConfigError, match=rf"^{key}: rejected .* in shard {tmp_path}/shard-000[01]\.tar"):
        build_dataset(data(pattern, **kw))
    # the endless stream of a rank stops too (an epoch with nothing accepted), it does not hang
    with pytest.raises(ConfigError, match=key):
        next(iter(S.ShardDataset(data(pattern, **kw), rank=1, world_size=2)))


def test_a_long_streak_of_rejections_stops_within_bounded_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "REJECT_STREAK", 5)
    write_shard(tmp_path / "x.tar", [{"key": f"k{i:02d}", "png": png(4 if i < 8 else 30, 30), "txt": "t"}
                                     for i in range(12)])
    with pytest.raises(ConfigError, match=r"data.min_size: rejected 5 samples in a row, e.g. in shard .*x\.tar"):
        list(S.ShardDataset(data(str(tmp_path / "x.tar"), min_size=20), epochs=1, rank=0, world_size=1))


def test_corrupt_samples_are_skipped_counted_and_limited(tmp_path):
    bad = {"s0_0003", "s0_0150"}
    pattern = make_shards(tmp_path, 1, 200, size=(8, 8), bad=bad)
    items = list(S.ShardDataset(data(pattern, max_corrupt_fraction=0.02), epochs=1, rank=0, world_size=1))
    assert len(items) == 198 and sum(it["corrupt"] for it in items) == 2
    assert items[3]["corrupt"] == 1  # counted on the next item that comes through
    batch = collate(items[:8])
    assert take_corrupt(batch) == 1 and "corrupt" not in batch

    with pytest.raises(ConfigError, match=r"data.max_corrupt_fraction: 2 of \d+ samples read are corrupt "
                                          r"\(more than 0.005\), the latest in shard .*shard-0000\.tar"):
        list(S.ShardDataset(data(pattern, max_corrupt_fraction=0.005), epochs=1, rank=0, world_size=1))


def test_missing_shard_or_empty_pattern_fails_before_the_teacher(tmp_path, capsys, monkeypatch):
    from fewstep.pipelines import cli
    from tests.test_cli import one_clear_line

    monkeypatch.setattr(cli, "_load_pipeline_for", lambda cfg: pytest.fail("the teacher was loaded"))
    make_shards(tmp_path, 2, 2)
    raw = run_dict(tmp_path)
    raw["data"] = {"source": "webdataset", "path": str(tmp_path / "shard-{0000..0002}.tar")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    one_clear_line(fewstep(capsys, "train", cfg), f"data.path: shard {tmp_path}/shard-0002.tar does not exist")
    one_clear_line(fewstep(capsys, "train", cfg, "--set", "data.path="), "data.path: required for data.source "
                                                                         "'webdataset'")
    one_clear_line(fewstep(capsys, "train", cfg, "--set", f"data.path={tmp_path}/shard-{{0000..0001}}.tar",
                           "--set", "data.image_key=jpg"), "data.image_key: rejected")


def test_training_streams_shards_and_logs_corrupt_samples(tmp_path, capsys):
    """The loop on a webdataset source: no map-style sampler, a worker, and the skipped count in the logs."""
    samples = [{"key": f"k{i:02d}", "png": b"garbage" if i == 1 else png(32, 32, 10 * i), "txt": CAPTION}
               for i in range(12)]
    write_shard(tmp_path / "a.tar", samples)
    raw = run_dict(tmp_path, steps=2, checkpoint_every=0)
    raw["data"] = {"source": "webdataset", "path": str(tmp_path / "a.tar"), "shuffle_buffer": 0,
                   "max_corrupt_fraction": 0.5, "num_workers": 1}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    code, err = fewstep(capsys, "train", cfg, "--no-export")
    assert code == 0, err
    records = [r for r in read_logs(tmp_path / "runs" / "t") if "student/loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["data/corrupt"] == 1  # sample k01, skipped while making the first batch


@pytest.mark.slow
def test_two_processes_draw_disjoint_samples_through_the_loop_loader(tmp_path):
    """torchrun, 2 ranks x 2 workers: the loader the loop builds (data.prepare_loader) gives each rank
    its own samples, which together are the epoch, each once (accelerate must not split again)."""
    make_shards(tmp_path, 4, 6)
    proc = torchrun_free_port(str(tmp_path), module="tests.test_shards")
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 12
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"s{k}-{i}" for k in range(4) for i in range(6))


def torchrun_free_port(*args, module: str):
    """``torchrun --nproc_per_node 2 -m module args`` on a port nobody holds (other tests use a fixed one)."""
    import shutil
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("torchrun")
    cmd = [str(exe) if exe.exists() else shutil.which("torchrun"), "--nproc_per_node", "2", "--master_port", str(port),
           "-m", module, *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1],
                          env=env)


def _rank_main(root: str) -> None:
    """One rank of the 2-process test: 4 batches of 3 through the loop's loader, captions to rank<r>.json."""
    from accelerate import Accelerator

    from fewstep.distill.data import prepare_loader

    acc = Accelerator()
    cfg = data(str(Path(root) / "shard-{0000..0003}.tar"), shuffle_buffer=3, num_workers=2)
    ds = build_dataset(cfg)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate, num_workers=2, drop_last=True)
    batches = iter(prepare_loader(acc, loader))
    captions = [c for _ in range(4) for c in next(batches)["captions"]]
    (Path(root) / f"rank{acc.process_index}.json").write_text(json.dumps(captions))
    acc.wait_for_everyone()


if __name__ == "__main__":
    os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    _rank_main(sys.argv[1])
