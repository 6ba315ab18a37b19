"""bench/step_bound.py's arithmetic: the bound is the sum of the passes (count per step x seconds), the timed
parts of the rest stay out of it, and "other" is what they leave of step - bound (the benchmark itself: run it)."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bound():
    spec = importlib.util.spec_from_file_location("bench_step_bound", BENCH / "step_bound.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))  # step_bound imports its neighbour score_cost
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def row(part, per_step, cpu, wall=None):
    return {"part": part, "per_step": per_step, "cpu": cpu, "wall": cpu if wall is None else wall}


def test_bound_sums_passes_and_the_rest_is_split_into_its_timed_parts(bound):
    rows = [row("teacher", 1, 0.3), row("fake score", 5, 0.1, wall=0.2), row("student", 2, 0.05),
            row("optimizer", 6, 0.01), row("data", 6, 0.005), row("tokenize", 2, 0.001)]
    out = bound.split({"wall": 2.0, "cpu": 1.5}, rows)
    assert out["bound"]["cpu"] == pytest.approx(0.3 + 0.5 + 0.1 + 0.06)
    assert out["bound"]["wall"] == pytest.approx(0.3 + 1.0 + 0.1 + 0.06)
    assert out["parts"]["fake score"]["cpu"] == pytest.approx(0.5)
    assert out["parts"]["EMA"] == {"wall": 0, "cpu": 0}  # every part of the table, done or not
    assert "data" not in out["parts"]  # the rest's parts are not passes
    assert out["rest"]["total"]["cpu"] == pytest.approx(1.5 - 0.96)
    assert out["rest"]["data"]["cpu"] == pytest.approx(0.03)
    assert out["rest"]["adapter switch"]["cpu"] == 0
    assert out["rest"]["other"]["cpu"] == pytest.approx(1.5 - 0.96 - 0.03 - 0.002)
    assert out["ratio"]["cpu"] == pytest.approx(1.5 / 0.96)
    assert out["holds"] is False  # 1.56x > 1.15x (judged on CPU time)
    assert bound.split({"wall": 1.0, "cpu": 1.0}, rows)["holds"] is True  # 1.04x


def test_an_unknown_part_is_kept_as_a_pass(bound):
    out = bound.split({"wall": 1.0, "cpu": 1.0}, [row("teacher", 1, 0.5), row("unet", 1, 0.25)])
    assert out["parts"]["unet"]["cpu"] == 0.25 and out["bound"]["cpu"] == 0.75
