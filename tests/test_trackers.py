"""train.report_to: tensorboard for real (event files read back with tensorboard's own reader), the
clean error when a tracker's package is missing, and nothing imported when it is unset."""
import sys

import pytest
import yaml

from fewstep.distill.config import ConfigError
from fewstep.distill.run_config import parse_config
from fewstep.distill.trackers import check_trackers, scalars, tracker_names
from tests.conftest import fewstep, run_dict


def test_tracker_names_and_record_scalars():
    assert tracker_names("none") == [] and tracker_names("all") == ["tensorboard", "wandb"]
    train = {"step": 3, "student/loss": 0.5, "student/lr": 1e-3, "sec_per_step": 0.2, "student/sec_per_step": 0.1}
    assert scalars(train) == {"student/loss": 0.5, "student/lr": 1e-3, "sec_per_step": 0.2, "student/sec_per_step": 0.1}
    val = {"step": 4, "validation": {"steps": 2, "fid": 31.5, "all": None, "seconds": 1.0}}
    assert scalars(val) == {"validation/fid@2": 31.5, "validation/seconds@2": 1.0}  # a non-finite (None) is left out
    assert scalars({"event": "resumed", "step": 2, "from": "x"}) == {}


def test_report_to_is_checked_by_name(tmp_path):
    raw = run_dict(tmp_path)
    raw["train"]["report_to"] = "mlflow"
    with pytest.raises(ConfigError, match="train.report_to"):
        parse_config(raw)


@pytest.mark.parametrize("missing", ["tensorboard", "wandb"])
def test_missing_tracker_package_is_one_line_before_the_teacher(tmp_path, monkeypatch, capsys, missing):
    """A tracker that is not installed: exit 2, one line naming the key and the pip extra, nothing built."""
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, f"is_{missing}_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"train.report_to: .*{missing}.*pip install fewstep\[tracking\]"):
        check_trackers("all")
    raw = run_dict(tmp_path)
    raw["train"]["report_to"] = missing
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code, err = fewstep(capsys, "train", tmp_path / "c.yaml", "--no-export")
    assert code == 2 and err.strip().count("\n") == 0, err
    assert err.startswith("fewstep: error: train.report_to:") and "pip install fewstep[tracking]" in err
    assert not (tmp_path / "runs").exists()  # refused before any model or run folder


@pytest.mark.slow
def test_unset_report_to_imports_no_tracker(tmp_path):
    """A whole short run with report_to unset never imports tensorboard or wandb (a fresh interpreter)."""
    import subprocess

    code = ("import sys; from fewstep.distill.loop import Trainer; from fewstep.distill.run_config import parse_config;"
            "from fewstep.pipelines.tiny import build_tiny_pipeline; from tests.conftest import run_dict;"
            f"cfg = parse_config(run_dict(__import__('pathlib').Path({str(tmp_path)!r}), steps=1, checkpoint_every=0));"
            "Trainer(cfg, build_tiny_pipeline(cfg.model.tiny, seed=0)).train();"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'tensorboardX', 'wandb')"
            " or m == 'torch.utils.tensorboard']; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
                          cwd=__import__("pathlib").Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_tensorboard_gets_each_step_once_and_the_grid(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = run_dict(tmp_path, method="lcm", steps=4, checkpoint_every=2, validation_every=2)
    raw["student"] = {"kind": "lora", "lora_rank": 4, "lora_alpha": 4}
    raw["train"]["report_to"] = "tensorboard"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code, err = fewstep(capsys, "train", tmp_path / "c.yaml", "--no-export")
    assert code == 0, err
    # as if killed after step 4 before its checkpoint: resumed from step 2, steps 3-4 are redone and
    # tensorboard's purge drops the first attempt's events of those steps, so each step appears once
    import shutil

    shutil.rmtree(tmp_path / "runs" / "t" / "checkpoints" / "checkpoint-4")
    code, err = fewstep(capsys, "train", tmp_path / "c.yaml", "--no-export", "--resume", "latest")
    assert code == 0 and "at step 2" in err, err
    folder = tmp_path / "runs" / "t" / "tensorboard" / "fewstep"
    assert list(folder.glob("events.out.tfevents.*")), sorted(p.name for p in folder.rglob("*"))
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    for tag in ("student/loss", "student/lr", "sec_per_step", "student/sec_per_step"):
        assert tag in tags["scalars"], tags
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3, 4], tag
    from fewstep.distill.runlog import read_logs

    logged = {r["step"]: r["student/loss"] for r in read_logs(tmp_path / "runs" / "t") if "student/loss" in r}
    assert {e.step: pytest.approx(e.value) for e in events.Scalars("student/loss")} == logged
    images = events.Images("samples")
    assert [e.step for e in images] == [2, 4] and images[0].width > 0 and images[0].height > 0

