"""Shared fixtures: a very small fresh pipeline and run configs, all on CPU."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # CI has 2 cores; oversubscribed OpenMP threads make tiny kernels crawl

SMALL_ARCH = {"text_hidden": 32, "text_layers": 1, "text_heads": 2, "vae_channels": [8, 16, 16],
              "unet_channels": [16, 32], "unet_attention_head_dim": 8}


def run_dict(tmp_path, method="denoise", steps=6, **train):
    """A raw config mapping for a short run on a fresh very small pipeline."""
    t = {"steps": steps, "batch_size": 4, "lr": 1e-3, "log_every": 1, "checkpoint_every": 3,
         "validation_every": 0, "seed": 0}
    t.update(train)
    return {"name": "t", "output_dir": str(tmp_path / "runs"), "method": {"name": method},
            "model": {"tiny": dict(SMALL_ARCH)}, "train": t,
            # metrics off: a test that wants the quality signal turns it on (tests/test_validation_signal.py)
            "validation": {"num_images": 2, "metrics": False}}


def lcm_step(trainer) -> tuple[float, list[torch.Tensor]]:
    """The LCM loss of one fixed batch (fixed noise, timesteps, guidance) of a LoRA student's Trainer,
    and its LoRA gradients."""
    params = trainer.params["student"]
    for p in params:
        p.grad = None
    torch.manual_seed(123)
    loss = trainer.method.loss(trainer.models, trainer.val_batch, "student", 0).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in params]


# Tests that train, export or start fresh interpreters for more than a few seconds on a 2-core runner
# (measured with --durations), in files that do not mark themselves: the inner loop
# `python -m pytest -m "not slow"` skips them, CI's plain `python -m pytest` runs them.
SLOW = {
    "test_assets.py": {"test_embedded_teacher_loads_with_plain_diffusers_offline"},
    "test_compile.py": {"test_compiled_lcm_lora_step_equals_the_eager_one",
                        "test_sampling_of_a_compiled_run_compiles_nothing"},
    "test_distributed.py": {"test_two_process_lora_training_checkpoints_and_resumes"},
    "test_export.py": {"test_export_matches_fewstep_sampler_in_plain_diffusers"},
    "test_judges.py": {"test_short_classifier_build_is_sane_and_reproducible",
                       "test_tiny_clip_build_writes_an_open_clip_folder_eval_loads"},
}


def pytest_collection_modifyitems(config, items):
    """Mark the SLOW tests (before ``-m`` deselects); a renamed test must not drop out silently."""
    modules = {}
    for item in items:
        names = SLOW.get(item.path.name)
        if names is not None:
            modules[item.path.name] = item.module
            if item.originalname in names:
                item.add_marker(pytest.mark.slow)
    for file, module in modules.items():
        missing = sorted(name for name in SLOW[file] if not hasattr(module, name))
        if missing:
            raise pytest.UsageError(f"tests/conftest.py SLOW lists {file}::{', '.join(missing)}, which no longer exist")


def fewstep(capsys, *args) -> tuple[int, str]:
    """(exit status, stderr) of ``fewstep ARGS`` run in this process (a subprocess would spend seconds
    importing diffusers for each call)."""
    from fewstep.pipelines.cli import main

    capsys.readouterr()  # drop whatever earlier setup printed
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def small_arch():
    from fewstep.distill.config import TinyArch
    return TinyArch(**SMALL_ARCH)
