"""Reports of scored rows: value ± half-width, lopsided intervals in brackets, paired differences marked only
when resolved, the floor row, the resolution statement and warnings."""
import json

from fewstep.eval import report as R


def scored_rows():
    teacher = {"model": "teacher", "family": "teacher (DDIM, trailing)", "steps": 25, "fid": 40.0,
               "clip_score": 0.96, "sec_per_image": 0.2, "ci": {"fid": [37.0, 43.0], "clip_score": [0.95, 0.97]}}
    student = {"model": "student", "family": "lcm", "steps": 2, "fid": 46.0, "clip_score": 0.955, "sec_per_image": 0.02,
               "ci": {"fid": [43.0, 49.0], "clip_score": [0.945, 0.965]},
               "vs_teacher": {"fid": {"diff": 6.0, "lo": 2.0, "hi": 10.0},  # resolved
                              "clip_score": {"diff": -0.005, "lo": -0.012, "hi": 0.002}}}  # level
    lopsided = {"model": "other", "family": "x", "steps": 1, "fid": 50.0, "clip_score": 0.9, "sec_per_image": 0.01,
                "ci": {"fid": [49.5, 60.0]}, "vs_teacher": {"fid": {"diff": 10.0, "lo": 9.5, "hi": 20.0}}}
    floor = {"model": "real images (floor)", "steps": None, "fid": 20.0, "clip_score": 0.975,
             "ci": {"fid": [18.0, 22.0]}, "vs_teacher": {"fid": {"diff": -20.0, "lo": -24.0, "hi": -16.0}}}
    return [teacher, student, lopsided], floor


def test_scored_report_shows_intervals_differences_floor_and_resolution(tmp_path):
    rows, floor = scored_rows()
    protocol = {"num_images": 1000, "bootstrap_resamples": 200, "paired_differences": "row - teacher @ 25 steps",
                "warnings": ["degenerate features: 15 of 128 dimensions never vary"]}
    paths = R.write_report(tmp_path, rows, protocol, floor=floor)
    md = paths["report_md"].read_text()
    assert md.index("> **Warning:** degenerate features") < md.index("## Protocol")
    assert "- **warnings**" not in md  # stated once, at the top
    lines = {}
    for line in md.splitlines():  # the first table that names a model: the results
        if line.startswith("| "):
            lines.setdefault(line.split("|")[1].strip(), line)
    assert "| 40.0 ± 3.0 |" in lines["teacher"] and "| 0.960 ± 0.010 |" in lines["teacher"]
    assert "50.0 [49.5, 60.0]" in lines["other"]  # ± would hide that the interval barely reaches below
    assert "real images (floor)" in lines and "20.0 ± 2.0" in lines["real images (floor)"]
    diff_lines = [line for line in md.splitlines() if line.startswith("| student | 2 | +")]
    assert len(diff_lines) == 1 and "+6.0 ± 4.0 *" in diff_lines[0] and "-0.0050 ± 0.0070 |" in diff_lines[0]
    assert "at 1000 images" in md and "fid 4.625 (4 to 5.25)" in md  # median paired half-width of the models (4.0, 5.25)
    data = json.loads(paths["metrics_json"].read_text())
    assert data["floor"]["model"] == "real images (floor)" and [r["model"] for r in data["rows"]] == \
        ["teacher", "student", "other"]
    assert data["resolution"]["paired"]["fid"] == 4.625 and data["resolution"]["value"]["fid"] == 3.0
    assert data["resolution"]["paired_range"]["fid"] == [4.0, 5.25]


def test_plain_rows_keep_the_generic_table(tmp_path):
    rows = [{"model": "a", "steps": 1, "fid": 3.0, "vs_teacher": {"fid": {"diff": 1.0, "lo": 0.0, "hi": 2.0}}}]
    md = R.write_report(tmp_path, rows, {"num_images": 4})["report_md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert "vs_teacher" not in header and "Paired differences" not in md
