"""The count of corrupt samples a webdataset stream skipped (``data/corrupt`` in logs.jsonl) survives
``--resume``: it is saved with the checkpoint's counters, one entry per process, and a resumed run logs
the same running total as the run it continues, not a count restarted at 0."""
import json

import pytest
import yaml

from fewstep.distill.checkpoints import STATE_FILE, own_count
from fewstep.distill.runlog import read_logs
from tests.conftest import fewstep, run_dict
from tests.test_shards import CAPTION, png, write_shard

BAD = {1, 6, 10, 11, 16}  # sample indices holding bytes that are no image


@pytest.fixture
def config(tmp_path):
    """A 4-step run (checkpoints 2 and 4) over one real tar of 24 samples, 5 of them corrupt, read in order:
    batches of 4 skip 1, 1, 2 and 1 of them, so the running count is 1, 2, 4, 5."""
    samples = [{"key": f"k{i:02d}", "png": b"not an image" if i in BAD else png(32, 32, 10 * i), "txt": CAPTION}
               for i in range(24)]
    write_shard(tmp_path / "a.tar", samples)
    raw = run_dict(tmp_path, steps=4, checkpoint_every=2)
    raw["data"] = {"source": "webdataset", "path": str(tmp_path / "a.tar"), "shuffle_buffer": 0,
                   "max_corrupt_fraction": 0.5}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def corrupt_by_step(run) -> dict[int, int]:
    return {r["step"]: r.get("data/corrupt") for r in read_logs(run) if "student/loss" in r}


def test_corrupt_count_continues_after_resume(tmp_path, capsys, config):
    run = tmp_path / "runs" / "t"
    code, err = fewstep(capsys, "train", config, "--no-export")
    assert code == 0, err
    uninterrupted = corrupt_by_step(run)
    assert uninterrupted == {1: 1, 2: 2, 3: 4, 4: 5}
    state = json.loads((run / "checkpoints" / "checkpoint-2" / STATE_FILE).read_text())
    assert state["corrupt_skipped"] == [2]  # one entry per process

    code, err = fewstep(capsys, "train", config, "--no-export", "--resume", run / "checkpoints" / "checkpoint-2")
    assert code == 0 and "resumed from" in err and "at step 2" in err, err
    raw = [json.loads(line) for line in (run / "logs.jsonl").read_text().splitlines()]
    marker = next(i for i, r in enumerate(raw) if r.get("event") == "resumed")
    after = [(r["step"], r["data/corrupt"]) for r in raw[marker:] if "student/loss" in r]  # the resumed attempt's
    assert after == [(3, 4), (4, 5)]  # counted on from the saved 2, not from 0
    assert corrupt_by_step(run) == uninterrupted


def test_a_checkpoint_without_the_count_resumes_from_zero():
    """Checkpoints written before the count was saved hold no entry: the count starts again at 0."""
    assert own_count({"corrupt_skipped": [3, 7]}, "corrupt_skipped", 1) == 7
    assert own_count({}, "corrupt_skipped", 0) == 0
