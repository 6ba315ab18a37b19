"""Imports point downwards (DESIGN.md, Layers): distill/ knows neither pipelines/ nor eval/, eval/
knows neither distill/ nor pipelines/, nothing uses the old generic top-level names, and a config
error is answered before torch, diffusers or transformers is imported."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_dict

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"distill": "fewstep.distill", "pipelines": "fewstep.pipelines", "eval": "fewstep.eval"}
OLD_NAMES = ("distill", "pipelines", "eval")
HEAVY = ("torch", "diffusers", "transformers")


def _module_name(path: Path) -> tuple[str, bool]:
    """(dotted import name, is a package __init__) of a repo source file, e.g. distill/data/x.py."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in FOLDERS:
        parts[0] = FOLDERS[parts[0]]
    is_init = parts[-1] == "__init__"
    if is_init:
        parts = parts[:-1]
    return ".".join(parts), is_init


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module a ``from ... import`` names, resolving ``from ..x import y`` by the file's package."""
    if not node.level:
        return node.module or ""
    name, is_init = _module_name(path)
    package = name.split(".") if is_init else name.split(".")[:-1]
    if node.level - 1 >= len(package):
        return "." * node.level + (node.module or "")  # beyond the top: not a module of ours
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _string_imports(tree: ast.AST) -> list[str]:
    """Modules named as strings: ``importlib.import_module("x")``, ``__import__("x")``, ``-m x`` argument lists."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                found.append(node.args[0].value)
        if isinstance(node, (ast.List, ast.Tuple)):
            for a, b in zip(node.elts, node.elts[1:]):
                if isinstance(a, ast.Constant) and a.value == "-m" and isinstance(b, ast.Constant) \
                        and isinstance(b.value, str):
                    found.append(b.value)
    return found


def imports(path: Path, code: str | None = None) -> list[str]:
    """Every module a Python file imports, as absolute names (``from a import b`` counts ``a`` and
    ``a.b``, since ``b`` may be a submodule), including inside functions and strings that are
    themselves Python scripts run in a subprocess."""
    tree = ast.parse(path.read_text() if code is None else code)
    found = _string_imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            found.append(module)
            found += [f"{module}.{alias.name}" if module else alias.name for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:
                found += imports(path, node.value)  # an embedded script (python -c / a written file)
            except SyntaxError:
                pass  # prose, not code
    return found


def sources(*folders: str) -> list[Path]:
    files = [p for f in folders for p in sorted((REPO / f).rglob("*.py"))]
    assert files, folders
    return files


def offenders(folders: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sources(*folders):
        for name in imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(REPO)}: {name}")
    return bad


# Each import form the checks must catch; the old names are filled in at run time, so this file's own
# scan (tests/ is checked for old names) does not see them.
SAMPLE = """
import fewstep.eval.metrics
from fewstep.PIPELINES import cli
from ...PIPELINES.export import f
from ... import EVAL
def g():
    import importlib; importlib.import_module("fewstep.EVAL")
S = "import sys, PIPELINES.teacher"
A = [sys.executable, "-m", "DISTILL.cli"]
T = "the fewstep.eval layer is imported by pipelines"
"""


def test_the_import_scanner_sees_every_form():
    """The checks below can fail: every import form is caught (and prose is not)."""
    code = SAMPLE.replace("PIPELINES", "pipelines").replace("EVAL", "eval").replace("DISTILL", "distill")
    found = imports(REPO / "distill" / "methods" / "x.py", code)  # the file's package resolves ``from ...``
    for name in ("fewstep.eval.metrics", "fewstep.pipelines.cli", "fewstep.pipelines.export.f", "fewstep.eval",
                 "pipelines.teacher", "distill.cli"):
        assert name in found, (name, found)
    assert not any("layer" in n for n in found), found


def test_distill_imports_neither_pipelines_nor_eval():
    assert offenders(("distill",), ("fewstep.pipelines", "fewstep.eval")) == []


def test_eval_imports_neither_distill_nor_pipelines():
    assert offenders(("eval",), ("fewstep.distill", "fewstep.pipelines")) == []


def test_no_old_top_level_import_names():
    """``import eval`` / ``from distill ...`` / ``-m pipelines.cli`` would pick up a user's own folder or
    another distribution (DESIGN.md, Package); every import goes through ``fewstep.``."""
    assert offenders(("distill", "pipelines", "eval", "tests", "bench"), OLD_NAMES) == []
    # The documented command lines too (README's accelerate launch -m, CI).
    old = re.compile(r"(-m\s+|from\s+|import\s+)(" + "|".join(OLD_NAMES) + r")\.\w")
    for doc in [*REPO.glob("*.md"), REPO / ".ci" / "run"]:
        if doc.is_file():
            assert not old.search(doc.read_text()), (doc.name, old.search(doc.read_text()).group(0))


def _fresh_python(code: str, cwd: Path, *args: str) -> dict | list:
    """Run ``code`` in a new interpreter (nothing imported yet) and return the JSON it prints last."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_core_loads_without_pipelines_or_eval(tmp_path):
    out = _fresh_python(
        "import json, sys, fewstep.distill.loop, fewstep.distill.methods.registry\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('fewstep.pipelines', 'fewstep.eval')))))",
        tmp_path)
    assert out == []


CONFIG_ERRORS = """
import contextlib, io, json, sys
from fewstep.pipelines.cli import main
out = []
for path in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", path])
    out.append({"rc": rc, "stderr": err.getvalue(), "heavy": [m for m in HEAVY if m in sys.modules]})
print(json.dumps(out))
""".replace("HEAVY", repr(HEAVY))


def test_config_errors_come_before_heavy_imports(tmp_path):
    """``fewstep train`` with a missing file or an unknown key says so in one line, exit 2, and has not
    imported torch / diffusers / transformers by then (they take seconds to import)."""
    raw = run_dict(tmp_path)
    raw["train"]["lerning_rate"] = 1e-4
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(raw))
    missing, unknown = _fresh_python(CONFIG_ERRORS, tmp_path, "missing.yaml", str(typo))
    for result, needle in ((missing, "missing.yaml"), (unknown, "unknown key 'train.lerning_rate'")):
        lines = [line for line in result["stderr"].splitlines() if line.strip()]
        assert result["rc"] == 2 and len(lines) == 1, result
        assert lines[0].startswith("fewstep: error:") and needle in lines[0], result
        assert result["heavy"] == [], result
