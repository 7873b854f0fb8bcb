"""The package's layers hold: import contracts, no import circle, a torch-free format core.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and are drawn in
docs/architecture.md; this test runs them, so a wrong-way import fails CI.
"""

from __future__ import annotations

import graphlib
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    # in a subprocess: import-linter configures logging, which would silence the loggers
    # of modules other tests have imported
    code = (
        "from importlinter.cli import lint_imports\n"
        f"raise SystemExit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, "
        "no_cache=True, no_logo=True))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"an import breaks a layer contract:\n{res.stdout[-4000:]}"


def test_no_import_circle():
    """Module level and function level imports alike: no module reaches itself."""
    graph = grimp.build_graph("bayling_duplex", cache_dir=None)
    deps = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    sorter = graphlib.TopologicalSorter(deps)
    try:
        sorter.prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import circle: {' -> '.join(e.args[1])}")


def _imports_torch(code: str) -> bool:
    res = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1] == "True"


def test_the_format_core_imports_without_torch():
    assert not _imports_torch(
        "import bayling_duplex.format.interleave, bayling_duplex.format.render, "
        "bayling_duplex.format.spec, bayling_duplex.format.vocab, bayling_duplex.format.records"
    )


def test_data_render_runs_without_importing_torch(tmp_path):
    """``python -m bayling_duplex.data render`` needs a tokenizer, never the model: from a
    fresh cache it builds the tiny tokenizer alone, and torch is never imported."""
    example = ROOT / "docs" / "examples" / "worked_example.jsonl"
    argv = [
        "render",
        f"source={example}",
        "format.slots_per_block=2",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['bayling_duplex.data', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('bayling_duplex.data', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
    )
    assert not _imports_torch(code)
