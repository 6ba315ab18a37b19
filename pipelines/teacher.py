"""Loading a teacher: a diffusers Stable-Diffusion pipeline from a local folder or a hub id.

Nothing is fetched from the network unless the user passes a hub id (a string that is not an
existing path) that the local Hugging Face cache does not hold. A cached hub id (at ``revision``)
resolves to its snapshot folder in the cache (huggingface_hub's layout:
``models--{org}--{name}/snapshots/{commit}/``, ``refs/{branch}`` holding the commit) and loads from
there like any local folder, so a cached teacher needs no network and is checked the same way; an
uncached id with ``HF_HUB_OFFLINE`` set fails at once with one line saying how to make it local.
A local path that is not a diffusers pipeline fails before any work with a message naming the
missing file, and a truncated or overwritten ``.safetensors`` weight file is named before diffusers
reads it (its header says how long it must be). The UNet can also be built from its config alone,
on the meta device, so settings that depend on its layers are checked without its weights.

Every command that loads a teacher honours ``model.revision`` / ``model.variant`` (a :class:`Pin`): training,
export and cache from the run config; ``fewstep eval --run`` from the run's config; ``fewstep sample`` and
``fewstep eval`` with a LoRA export from the config the export carries (``export_pins``), the base its
fingerprint was taken from; ``fewstep sample --revision / --variant`` override that.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import huggingface_hub
import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError

from fewstep.eval.assets import assets_dir
from fewstep.pipelines.errors import TeacherError

ASSETS = assets_dir()
REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def resolve(name: str, revision: str | None = None) -> str:
    """The local folder ``name`` stands for: an existing path as given, an embedded name (``tiny-sd``,
    ``tiny-sd-v``) as its folder in assets/, a hub id the cache holds (at ``revision``) as its snapshot
    folder; anything else (a hub id to download) unchanged."""
    if Path(name).exists():
        return name
    if (ASSETS / name / "model_index.json").is_file():
        return str(ASSETS / name)
    snapshot = hub_snapshot(name, revision)
    return str(snapshot) if snapshot is not None else name


def is_local(name: str) -> bool:
    """Whether ``name`` is meant as a path (it exists, or is written as one), not as a hub id."""
    return Path(name).exists() or name.startswith((".", "/", "~"))


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of the hub model ``repo_id`` at ``revision`` (a branch or tag the cache
    recorded in ``refs/``, or a commit hash; None: ``main``), or None if the cache does not hold it or
    ``repo_id`` is no hub id. Reads the cache folder only (``HF_HUB_CACHE``, else ``HF_HOME``/hub)."""
    if is_local(repo_id):
        return None
    try:
        huggingface_hub.utils.validate_repo_id(repo_id)
        # model_index.json is the file every diffusers pipeline repo has; its snapshot folder holds the rest
        index = huggingface_hub.try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
    except (HFValidationError, ValueError):
        return None
    return Path(index).parent if isinstance(index, str) else None


def offline() -> bool:
    """Whether huggingface_hub may not use the network (``HF_HUB_OFFLINE``)."""
    return huggingface_hub.constants.is_offline_mode()


def make_local_hint(repo_id: str, revision: str | None) -> str:
    """How a user gets ``repo_id`` onto a machine without network (huggingface_hub's ``hf`` CLI)."""
    rev = f" --revision {revision}" if revision else ""
    return (f"on a machine with internet run `hf download {repo_id}{rev}` (older huggingface_hub: "
            f"`huggingface-cli download`) and copy its cache here (or set HF_HUB_CACHE / HF_HOME to it), or "
            f"`hf download {repo_id}{rev} --local-dir DIR` and point model.pretrained at DIR")


UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")


def has_unet_weights(folder: Path, variant: str | None) -> bool:
    """Whether ``folder/unet`` holds UNet weights of ``variant``. diffusers names a variant's files by
    inserting it before the extension (``diffusion_pytorch_model.fp16.safetensors``, shards
    ``...fp16-00001-of-00002.safetensors``), as ``save_pretrained(variant=...)`` writes them; None: the
    plain files. A hub download for one variant leaves only its files in the cache."""
    unet = folder / "unet"
    names = [f.name for f in unet.iterdir()] if unet.is_dir() else []
    if variant is None:
        return any(n in UNET_WEIGHTS for n in names)
    return any(f".{variant}." in n or f".{variant}-" in n for n in names)


def locate(name: str, revision: str | None = None, variant: str | None = None,
           keys: tuple[str, str] = ("model.revision", "model.variant")) -> str:
    """What ``load_pipeline`` will load, checked without reading any weights: the local folder (a path,
    an embedded name, or a cached hub id's snapshot that holds the UNet weights of ``variant``), or the
    hub id itself when it must be downloaded.

    Raises TeacherError (one line) for a folder that is no pipeline, a damaged weight file, a missing
    ``variant``, a ``revision`` given for a local folder, and a hub id that the cache lacks (or holds
    without the asked-for weights) while ``HF_HUB_OFFLINE`` is set, naming the id and how to make it local.
    ``keys``: what the messages call the revision and the variant (the config keys, or a command's flags)."""
    if is_local(name) or (ASSETS / name / "model_index.json").is_file():
        folder = resolve(name)
        if revision is not None:
            raise TeacherError(f"revision {revision!r} is for a hub id, but {name} is a local folder (it holds one "
                               f"version: drop {keys[0]})")
        check_pipeline_dir(folder)
        if variant is not None and not has_unet_weights(Path(folder), variant):
            raise TeacherError(f"{Path(folder) / 'unet'} has no {variant!r} weights (no file like "
                               f"diffusion_pytorch_model.{variant}.safetensors): drop {keys[1]}, or save them "
                               f"with save_pretrained(variant={variant!r})")
        return folder
    try:
        huggingface_hub.utils.validate_repo_id(name)
    except HFValidationError:
        raise TeacherError(f"teacher {name!r} is no local folder and no hub id (org/name)") from None
    snapshot = hub_snapshot(name, revision)
    if snapshot is not None and has_unet_weights(snapshot, variant):
        check_pipeline_dir(snapshot)  # a component or file missing from the cache is named here
        return str(snapshot)
    if offline():  # online, diffusers downloads what the cache lacks
        at = f" at revision {revision!r}" if revision else ""
        what = "is no local folder and not in" if snapshot is None else \
            f"is in the Hugging Face cache without its {variant or 'plain (non-variant)'} UNet weights; not found in"
        cache = huggingface_hub.constants.HF_HUB_CACHE
        raise TeacherError(f"teacher {name!r}{at} {what} the Hugging Face cache ({cache}) "
                           f"and HF_HUB_OFFLINE is set: {make_local_hint(name, revision)}")
    return name


def check_pipeline_dir(path: str | Path) -> None:
    """Raise TeacherError naming what is missing if ``path`` is not a diffusers SD pipeline."""
    path = Path(path)
    index = path / "model_index.json"
    if not path.is_dir():
        raise TeacherError(f"teacher path {path} is not a directory")
    if not index.is_file():
        raise TeacherError(f"{path} is not a diffusers pipeline: {index.name} is missing "
                           "(expected a folder written by pipeline.save_pretrained)")
    try:
        spec = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise TeacherError(f"{index} is not valid JSON ({e})") from None
    missing = [c for c in REQUIRED if c not in spec or not (path / c).is_dir()]
    if missing:
        raise TeacherError(f"{path} lacks the pipeline component(s) {', '.join(missing)}")
    for component in sorted(c for c in spec if not c.startswith("_") and (path / c).is_dir()):
        for weights in sorted((path / component).glob("*.safetensors")):
            problem = safetensors_problem(weights)
            if problem:
                raise TeacherError(f"{weights}: {problem} (a damaged teacher file: copy or download it again)")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a ``.safetensors`` file's framing, or None: the 8-byte header length, the JSON
    header and the end of its last tensor must account for the file's size exactly. Reads the header
    only; a changed byte inside tensor data is not seen (nothing records the teacher's hashes)."""
    size = path.stat().st_size
    if size < 8:
        return f"truncated: {size} bytes, not a safetensors file"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            return f"truncated or not a safetensors file: {size} bytes, its header alone claims {n + 8}"
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
            return "not a safetensors file (unreadable header)"
    if 8 + n + end != size:
        return f"truncated: {size} of {8 + n + end} bytes" if size < 8 + n + end else \
            f"{size} bytes, its header accounts for {8 + n + end}"
    return None


def unet_skeleton(name: str, revision: str | None = None):
    """The UNet of the local pipeline ``name`` (or cached hub id) built from ``unet/config.json`` on the
    meta device (no weight is read or allocated), or None where there is no local config (a hub id to
    download)."""
    folder = Path(resolve(name, revision)) / "unet"
    if not (folder / "config.json").is_file():
        return None
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    try:
        config = UNet2DConditionModel.load_config(folder)
    except (OSError, ValueError) as e:
        raise TeacherError(f"{folder / 'config.json'}: not a readable UNet config ({str(e).splitlines()[0]})") from None
    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)


def native_size(name: str, revision: str | None = None) -> tuple[int, int] | None:
    """``(sample_size, vae_factor)`` of the local pipeline ``name`` (or cached hub id) read from its
    ``unet/config.json`` and ``vae/config.json`` (the factor is 2 ** (number of VAE blocks - 1), as
    diffusers' pipelines compute it), or None where either file is missing (a hub id to download)."""
    folder = Path(resolve(name, revision))
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return int(unet["sample_size"]), 2 ** (len(vae["block_out_channels"]) - 1)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise TeacherError(f"{folder}: unet/config.json or vae/config.json is not a readable config "
                           f"({type(e).__name__}: {e})") from None


@contextmanager
def quiet_hub():
    """diffusers logs hub look-ups that failed ("Couldn't connect to the Hub", multi-line) before it
    raises; the one-line TeacherError says it all, so those records are dropped while loading."""
    log = logging.getLogger("diffusers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def causes(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from, outermost first: diffusers wraps hub errors in an
    OSError whose own text only says to read the stack trace above."""
    chain = [e]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def download_problem(name: str, revision: str | None, e: BaseException) -> str:
    """One line for a failed download of hub id ``name``: an unknown or unreadable repo, an unknown
    revision, or (anything else) a hub that could not be reached, with how to make the teacher local."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    chain = causes(e)
    if any(isinstance(c, RevisionNotFoundError) for c in chain):
        return f"the hub repo {name!r} has no revision {revision!r} (model.revision: a branch, tag or commit)"
    if any(isinstance(c, (RepositoryNotFoundError, GatedRepoError)) for c in chain):
        return (f"the hub has no repo {name!r} that you may read (check the id; a private or gated one needs "
                "`hf auth login` and access granted on its page)")
    root = chain[-1]
    return (f"could not download teacher {name!r}: the Hugging Face hub could not be reached ({type(root).__name__}: "
            f"{str(root).splitlines()[0] if str(root) else ''}); {make_local_hint(name, revision)}")


def load_pipeline(name: str, revision: str | None = None, variant: str | None = None,
                  keys: tuple[str, str] = ("model.revision", "model.variant"), **kwargs) -> StableDiffusionPipeline:
    """Load a Stable-Diffusion pipeline (local dir, embedded name, or hub id, cached or downloaded) on
    the CPU in fp32, whatever dtype its files hold (``variant="fp16"`` weights are upcast).

    Args:
        name: a folder written by ``save_pretrained``, an embedded name, or a hub id ``org/name``.
        revision: hub ids only: a branch, tag or commit hash (None: ``main``).
        variant: the weight files' variant (``"fp16"``: ``*.fp16.safetensors``), as diffusers' ``variant``.
        keys: what error messages call ``revision`` and ``variant`` (``locate``).
    """
    source = locate(name, revision, variant, keys)
    download = not is_local(source)
    if not download:
        kwargs.setdefault("local_files_only", True)
    elif revision is not None:
        kwargs["revision"] = revision
    try:
        with quiet_hub():
            pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False,
                                                           variant=variant, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as e:  # a damaged or mismatched file
        if download:  # the network, an unknown id or revision, a gated repo
            raise TeacherError(download_problem(name, revision, e)) from None
        raise TeacherError(f"could not load teacher {name!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_teacher(model) -> StableDiffusionPipeline:
    """The teacher a run's ``model`` section (``ModelConfig``) names, with its revision and variant."""
    return load_pipeline(model.pretrained, revision=model.revision, variant=model.variant)


def run_teacher(cfg) -> StableDiffusionPipeline:
    """The teacher a run (``RunConfig``) trains on: ``load_teacher`` of its ``model`` section, or for
    ``model.tiny`` a fresh tiny pipeline seeded with ``train.seed`` (the same weights every time), its
    scheduler re-made with ``model.prediction_type`` where that is set."""
    from fewstep.pipelines.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(cfg.model.tiny, cfg.train.seed) if cfg.model.tiny else load_teacher(cfg.model)
    if cfg.model.prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                          prediction_type=cfg.model.prediction_type)
    return pipe


class Pin(NamedTuple):
    """Which files of a pipeline id load: ``model.revision`` (hub ids: a branch, tag or commit; None: main)
    and ``model.variant`` (``fp16``: the ``*.fp16.safetensors`` files; None: the plain ones)."""

    revision: str | None = None
    variant: str | None = None


def export_pins(folder: str | Path | None) -> dict[str, Pin]:
    """``{model.pretrained: Pin(model.revision, model.variant)}`` of the run that wrote the export ``folder``
    (its ``fewstep_config.yaml``); empty for a folder without one, or a run of a fresh tiny pipeline. A LoRA
    trained on a revision or variant of a hub teacher loads onto those files: the base it was trained on."""
    import yaml

    path = Path(folder) / "fewstep_config.yaml" if folder else None
    if path is None or not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    model = config.get("model") if isinstance(config, dict) else None
    name = model.get("pretrained") if isinstance(model, dict) else None
    return {name: Pin(model.get("revision"), model.get("variant"))} if isinstance(name, str) else {}
