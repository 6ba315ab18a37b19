"""bench/gpu_bench.py's arithmetic and guards (the benchmark itself needs a CUDA GPU: bench/gpu.sh), and
bench/score_sweep.py's reading of a run's logs."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))  # gpu_bench imports its neighbours (sd15_smoke, sd15_arch)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture(scope="module")
def gpu():
    return load("gpu_bench")


def test_peak_lookup_by_device_name(gpu):
    assert gpu.peak_for("NVIDIA H200") == 989.5
    assert gpu.peak_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_for("Tesla T4") is None  # unknown chips report no peak rather than a wrong one


def test_report_divides_step_time_by_the_bound_and_flops_by_step_time(gpu):
    passes = {n: {"s": s, "min": s, "max": s, "flops": f} for n, s, f in
              (("text_encode", 0.01, 1e12), ("student_forward_backward", 0.19, 9e12), ("adamw_step", 0.05, 0))}
    d = {"date": "2026-11-29", "device": "cuda", "resolution": 512, "skipped": ["train dmd2-b8: budget"],
         "parts": {"passes": [{"kind": "lora", "batch": 8, "passes": passes, "bound_s": 0.25, "flops": 10e12,
                               "channels_last": {"student_forward_backward": {"s": 0.152}}}],
                   "train": [{"name": "lcm-lora-b8", "batch": 8, "rc": 0, "s_per_step": 0.5, "spread": [0.4, 0.6],
                              "images_per_s": 16.0, "gpu_peak_gib": 15.0},
                             {"name": "lcm-full-b8", "batch": 8, "rc": -9, "stopped": "ran past 240 s"}]}}
    text = gpu.report(d)
    row = next(line for line in text.splitlines() if line.startswith("| lcm-lora-b8"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:] == ["0.500 [0.400, 0.600]", "16.0", "15.0", "0.250", "2.00", "20", "ok"]
    assert "rc -9 ran past 240 s" in text  # a failed run says so; it is not a row of numbers
    assert "| lora, 8 | 10.0 (100) | 190.0 (47) | 50.0 | - | 250.0 |" in text  # ms (TFLOP/s)
    assert "Skipped: train dmd2-b8: budget" in text
    assert "- lora, 8, networks NHWC (`train.channels_last`), ms (default / NHWC): student_forward_backward 190.0 / 152.0 (1.25x)" in text


def test_without_a_gpu_it_says_so_in_one_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, also on a machine that has one
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_bench.py"), "--out", "/nonexistent/x"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "bench/gpu_bench.py: no CUDA GPU here (torch.cuda.is_available() is False)"]


def test_sweep_reads_validations_and_step_times(tmp_path):
    sweep = load("score_sweep")
    recs = [{"step": 25, "generator/loss": 1.0, "sec_per_step": 2.0},
            {"step": 50, "validation": {"steps": 1, "all": 0.7, "fid": 150.0, "clip": 0.9}},
            {"step": 50, "sec_per_step": 4.0}, {"event": "resumed", "step": 50}]
    (tmp_path / "logs.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert sweep.read(tmp_path) == {"validations": [{"step": 50, "all": 0.7, "fid": 150.0}], "s_per_step": 3.0,
                                    "last_step": 50}
    assert sweep.read(tmp_path / "missing") == {"validations": [], "s_per_step": None, "last_step": 0}
