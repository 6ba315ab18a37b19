"""Reports: metrics.json round trip, markdown columns, valid PNG plots and grids; latency timing (on a
fake clock: what is timed, not how fast this runner is)."""
import json
import time

import pytest
import torch
from PIL import Image

from fewstep.eval import report as R
from fewstep.eval import latency
from fewstep.eval.latency import measure_latency, speedup

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ACC = {"color": 0.9, "shape": 0.8, "background": 1.0, "size": 0.95, "position": 0.85, "all": 0.6, "mean": 0.9}


def rows():
    out = [{"model": "teacher", "family": "teacher-ddim", "steps": s, "guidance": 3.0, "fid": 40.0 / s, "kid_mean": 0.1 / s,
            "clip_score": 0.2 + 0.01 * s, "attribute_accuracy": dict(ACC, all=0.5 + 0.01 * s), "sec_per_image": 0.01 * s}
           for s in (1, 2, 4, 25)]
    out += [{"model": "lcm-lora", "steps": s, "guidance": 1.0, "fid": 20.0 / s, "kid_mean": float("nan"),
             "clip_score": 0.25, "attribute_accuracy": ACC, "sec_per_image": 0.01 * s, "latency_all": [0.1, 0.2]}
            for s in (1, 2, 4)]
    return out


PROTOCOL = {"features": "embedded", "num_images": 1000, "resolution": 32, "reference": "procedural:seed=12345:n=5000",
            "clip_model": "embedded:tiny-clip", "clip_score": "raw cosine, prefix ''"}


def test_write_report_files_columns_and_round_trip(tmp_path):
    paths = R.write_report(tmp_path / "eval", rows(), PROTOCOL)
    assert set(paths) == {"metrics_json", "report_md", "quality_vs_steps", "quality_vs_latency"}
    for key in ("quality_vs_steps", "quality_vs_latency"):
        data = paths[key].read_bytes()
        assert data.startswith(PNG_MAGIC)
        with Image.open(paths[key]) as im:
            im.verify()
    back_rows, back_protocol = R.read_metrics_json(paths["metrics_json"])
    assert back_protocol == PROTOCOL
    expect = json.loads(json.dumps(rows()).replace("NaN", "null"))
    assert back_rows == expect
    md = paths["report_md"].read_text()
    assert md.index("## Protocol") < md.index("| model")
    assert "procedural:seed=12345:n=5000" in md
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:9] == ["model", "family", "steps", "guidance", "fid", "kid_mean", "clip_score", "acc.all", "acc.mean"]
    assert "sec_per_image" in cols and "acc.color" in cols and "latency_all" not in cols
    body = [line for line in md.splitlines() if line.startswith("| lcm-lora")]
    assert len(body) == 3 and all(line.count("|") == len(cols) + 1 for line in body)
    assert not list((tmp_path / "eval").glob(".*"))  # no temp files left behind


def test_groups_split_families_by_guidance_only_when_needed():
    rs = [{"model": "a", "steps": 1, "guidance": 1.0}, {"model": "a", "steps": 2, "guidance": 1.0},
          {"model": "b", "steps": 1, "guidance": 2.0}, {"model": "b", "steps": 1, "guidance": 4.0}]
    assert set(R._groups(rs)) == {"a", "b (cfg 2.0)", "b (cfg 4.0)"}


def test_sample_grid_layout_and_teacher_on_top(tmp_path):
    n, size = 3, 32
    teacher = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    teacher[:, 0] = 255  # red
    student = [torch.full((3, size, size), 40, dtype=torch.uint8) for _ in range(2)]  # a list of 2 images
    path = R.save_sample_grid([("student 1 step", student), ("teacher 25 steps", teacher)], tmp_path / "grid.png",
                              top="teacher 25 steps", scale=2, pad=2)
    assert path.read_bytes().startswith(PNG_MAGIC)
    im = Image.open(path).convert("RGB")
    cell = size * 2
    label_w = im.width - n * (cell + 2) - 2
    assert label_w > 20 and im.height == 2 * (cell + 2) + 2
    assert im.getpixel((label_w + cell // 2, 2 + cell // 2)) == (255, 0, 0)  # teacher row is on top
    assert im.getpixel((label_w + cell // 2, 4 + cell + cell // 2)) == (40, 40, 40)
    assert im.getpixel((label_w + 2 * (cell + 2) + cell // 2, 4 + cell + cell // 2)) == (255, 255, 255)  # empty cell
    label_area = im.crop((0, 0, label_w, im.height)).getcolors(1 << 16)
    assert any(c[1] != (255, 255, 255) for c in label_area)  # text was drawn


class AsyncDevice:
    """A fake clock and accelerator: a call only queues work; the clock moves when the device is synchronised
    (as CUDA returns before the kernels finish), so a timer stopped without synchronising reads zero."""

    def __init__(self, costs):
        self.now, self.queued, self.costs, self.calls = 0.0, 0.0, list(costs), 0

    def perf_counter(self) -> float:
        return self.now

    def generate(self) -> None:
        self.queued += self.costs[self.calls]
        self.calls += 1

    def synchronize(self) -> None:
        self.now, self.queued = self.now + self.queued, 0.0


def test_measure_latency_excludes_warmup_and_waits_for_the_device(monkeypatch):
    device = AsyncDevice([100.0, 1.0, 5.0, 2.0])  # a slow first call, like lazy initialisation
    monkeypatch.setattr(latency, "time", device)  # the module reads its clock as time.perf_counter
    out = measure_latency(device.generate, batch_size=4, warmup=1, repeats=3, synchronize=device.synchronize)
    assert device.calls == 4 and out["repeats"] == 3 and out["warmup"] == 1
    assert out["sec_per_batch_all"] == [1.0, 5.0, 2.0]  # the warm-up's 100 s counted nowhere
    assert out["sec_per_batch"] == 2.0 and out["statistic"] == "median"  # one slow repeat does not move it
    assert out["sec_per_image"] == 0.5
    assert speedup({"sec_per_image": 1.0}, out) == 2.0
    assert speedup(2.0, 0.5) == 4.0
    with pytest.raises(ValueError, match="non-positive"):
        speedup(1.0, {"sec_per_image": 0.0})


def test_measure_latency_reads_the_real_clock():
    """Without a fake clock each timed call lasts at least as long as it sleeps (a lower bound only: a
    shared runner may make any call slower)."""
    calls = []
    out = measure_latency(lambda: (calls.append(1), time.sleep(0.01)), batch_size=2, warmup=2, repeats=2,
                          synchronize=None)
    assert len(calls) == 4 and all(t >= 0.01 for t in out["sec_per_batch_all"])
    assert out["sec_per_image"] == pytest.approx(out["sec_per_batch"] / 2)
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_latency(lambda: None, batch_size=1, repeats=0)
