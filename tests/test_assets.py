"""The shipped embedded teachers load and generate with plain diffusers, offline, without fewstep."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets"

SCRIPT = """
import json, sys, numpy as np, torch, diffusers
pipe = diffusers.StableDiffusionPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
img = pipe(["a large red circle on the left, gray background"], num_inference_steps=10, guidance_scale=3.0,
           generator=torch.Generator().manual_seed(0), output_type="np").images[0]
print(json.dumps({"shape": list(img.shape), "std": float(img.std()),
                  "prediction_type": pipe.scheduler.config.prediction_type,
                  "fewstep_loaded": any(m.split(".")[0] in ("distill", "pipelines", "eval") for m in sys.modules)}))
"""


@pytest.mark.parametrize("name,ptype", [("tiny-sd", "epsilon"), ("tiny-sd-v", "v_prediction")])
def test_embedded_teacher_loads_with_plain_diffusers_offline(tmp_path, name, ptype):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ASSETS / name)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [32, 32, 3] and out["std"] > 0.05
    assert out["prediction_type"] == ptype and out["fewstep_loaded"] is False


def test_embedded_teacher_recipe_and_card():
    recipe = json.loads((ASSETS / "tiny-sd" / "fewstep_recipe.json").read_text())
    assert recipe["scheduler"] == "DDIMScheduler" and recipe["guidance"] > 1
    card = (ASSETS / "tiny-sd" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: diffusers" in card
