"""configs/accelerate/: each file goes through accelerate's own loader and through the argument
handling of ``accelerate launch`` (as far as it gets without GPUs), and says what its name promises.

``load_config_from_file`` rejects unknown top-level keys, but copies the keys of ``fsdp_config`` /
``deepspeed_config`` onto the launch arguments without checking them, so a misspelt plugin key would
be dropped silently; hence the check that each one is an argument ``accelerate launch`` knows, and
the environment that launch would hand the processes (what accelerate's plugins read at start)."""
from pathlib import Path
from unittest.mock import patch

import pytest

from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

FOLDER = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
EXPECTED = {  # file: (distributed type, processes in all, machines)
    "single_gpu.yaml": (DistributedType.NO, 1, 1),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8, 1),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 16, 2),
    "fsdp.yaml": (DistributedType.FSDP, 8, 1),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 8, 1),
}


def launch_env(path: Path) -> tuple[object, dict[str, str]]:
    """(launch arguments, environment of the launched processes) that ``accelerate launch
    --config_file path -m fewstep.pipelines.cli train run.yaml`` would produce, without launching."""
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "fewstep.pipelines.cli",
                                               "train", "run.yaml"])
    config = load_config_from_file(str(path))
    for section, prefix in ((config.fsdp_config, "fsdp_"), (config.deepspeed_config, "")):
        for key in section:  # launch copies fsdp_x / deepspeed keys onto args unchecked: each must be known
            name = key if key.startswith(prefix) else prefix + key
            assert hasattr(args, name), f"{path.name}: {key} is not an accelerate launch setting"
    with patch("accelerate.utils.launch.is_port_in_use", return_value=False):  # no launch: no port needed
        return _launch_env(args)


def _launch_env(args):
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


def test_every_shipped_file_is_checked():
    assert sorted(p.name for p in FOLDER.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerates_loader(name):
    config = load_config_from_file(str(FOLDER / name))
    kind, processes, machines = EXPECTED[name]
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes, config.num_machines) == (kind, processes, machines)
    # fewstep passes train.mixed_precision to Accelerator(), which overrides the launcher's; 'no' here
    # keeps the file from promising a precision the run config does not have
    assert config.mixed_precision == "no" and not config.use_cpu
    args, env = launch_env(FOLDER / name)
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    assert int(args.nproc_per_node) == processes // machines


def test_multi_node_names_the_fields_a_user_fills_in():
    config = load_config_from_file(str(FOLDER / "multi_node.yaml"))
    assert config.machine_rank == 0 and config.main_process_ip and config.main_process_port == 29500
    text = (FOLDER / "multi_node.yaml").read_text()
    for key in ("machine_rank", "main_process_ip", "main_process_port"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{key}:"))
        assert "FILL IN" in line, key
    args, _ = launch_env(FOLDER / "multi_node.yaml")
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 0, "8")


def test_fsdp_shards_full_students_and_gathers_whole_weights():
    config = load_config_from_file(str(FOLDER / "fsdp.yaml"))
    assert config.fsdp_config["fsdp_version"] == 2
    _, env = launch_env(FOLDER / "fsdp.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"  # FULL_SHARD
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    # the wrapped classes exist in diffusers' UNet under these names
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(",") == [BasicTransformerBlock.__name__, ResnetBlock2D.__name__]
    assert "LoRA students stay on DDP" in (FOLDER / "fsdp.yaml").read_text()


def test_deepspeed_is_zero_stage_2_without_accumulation():
    _, env = launch_env(FOLDER / "deepspeed_zero2.yaml")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "1"  # fewstep's loop refuses train.grad_accum > 1 here
    assert env["ACCELERATE_GRADIENT_CLIPPING"] == "1.0"  # = train.max_grad_norm's default
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == "none"
