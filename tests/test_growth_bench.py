"""bench/growth.py's growth arithmetic: the log-log slope recovers a power law's exponent, each
doubling's own exponent is constant for a power law and jumps at a cliff, and the memory line's
crossing is where the line reaches the limit."""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "growth.py"


@pytest.fixture(scope="module")
def growth():
    spec = importlib.util.spec_from_file_location("bench_growth", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0, 2.7])
def test_loglog_slope_recovers_exponent(growth, k):
    xs = [1, 2, 4, 8, 16]
    assert growth.loglog_slope(xs, [3.0 * x ** k for x in xs]) == pytest.approx(k)


def test_line_fit_exact_line(growth):
    xs = [1, 2, 4, 8]
    assert growth.line_fit(xs, [0.5 + 1.25 * x for x in xs]) == pytest.approx((0.5, 1.25))


def test_step_ratios_constant_for_power_law_jump_at_cliff(growth):
    xs = [1, 2, 4, 8]
    assert growth.step_ratios(xs, [x ** 1.5 for x in xs]) == pytest.approx([1.5, 1.5, 1.5])
    ys = [1, 2, 4, 32]  # linear, then 8x for a doubling
    assert growth.step_ratios(xs, ys) == pytest.approx([1.0, 1.0, 3.0])


def test_largest_fitting_is_the_crossing(growth):
    a, b, limit = 4.0, 1.5, 22.0
    x = growth.largest_fitting(a, b, limit)
    assert a + b * x == pytest.approx(limit) and x == pytest.approx(12.0)
