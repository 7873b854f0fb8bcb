"""A built wheel carries configs/ and data_recipes/, and a non-editable install runs from them.

The wheel is built from a copy of the sources in a temporary folder (so the
build's ``build/`` and ``*.egg-info`` never land in the working tree), without
build isolation or an index: it needs ``setuptools`` and ``bdist_wheel`` (the
``wheel`` package, or setuptools >= 70.1) in the test environment. Everything
here takes a few seconds: one wheel build, one ``--target`` install and two
``--cfg job`` runs, which compose configs but train nothing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bayling_duplex import config as cli_hydra

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("configs", "data_recipes")  # top-level folders the wheel must carry
IN_WHEEL = "bayling_duplex/_shipped"
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def repo_yaml_files() -> set[str]:
    """Every YAML of configs/ and data_recipes/, symlinks followed (configs/recipe -> data_recipes)."""
    found = set()
    for name in SHIPPED:
        for folder, dirs, files in os.walk(REPO / name, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            for file in files:
                if file.endswith((".yaml", ".yml")):
                    found.add(Path(folder, file).relative_to(REPO).as_posix())
    return found


def _can_build_wheel() -> str | None:
    """Why a wheel cannot be built here without isolation, or None."""
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed"
    import setuptools

    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {setuptools.__version__} needs the wheel package for bdist_wheel"
    return None


def _quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BAYLING_DUPLEX_ROOT", "PYTHONPATH")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", **extra)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    why = _can_build_wheel()
    if why:
        pytest.skip(f"cannot build a wheel without isolation: {why}")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src-copy"
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(REPO / name, src / name)
    for name in SHIPPED:  # symlinks kept: the build must follow configs/recipe itself
        shutil.copytree(REPO / name, src / name, symlinks=True)
    shutil.copytree(
        REPO / "src" / "bayling_duplex",
        src / "src" / "bayling_duplex",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_shipped"),
    )
    out = tmp / "wheelhouse"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "--no-cache-dir", "-w", str(out), str(src)]
    proc = _run(cmd, tmp, _quiet_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = out.glob("bayling_duplex_train-*.whl")
    return built


def test_wheel_ships_every_config_and_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = repo_yaml_files()
    assert {"configs/sft.yaml", "configs/recipe/demo.yaml", "data_recipes/demo.yaml"} <= expected
    shipped = {n.removeprefix(IN_WHEEL + "/") for n in names if n.startswith(IN_WHEEL + "/")}
    assert expected - shipped == set(), "YAML files missing from the wheel"
    assert {n for n in shipped if n.endswith((".yaml", ".yml"))} == expected
    with zipfile.ZipFile(wheel) as zf:  # copies, not stale or rewritten files
        for rel in sorted(expected):
            assert zf.read(f"{IN_WHEEL}/{rel}") == (REPO / rel).read_bytes(), rel
    assert "bayling_duplex/resources/tiny_corpus.txt" in names
    assert "bayling_duplex/resources/demo_text.txt" in names
    page = {"index.html", "app.js", "capture.js"}  # the live server's browser page
    assert {f"bayling_duplex/serve/page/{f}" for f in page} <= names
    assert not any(n.startswith("bayling_duplex/conf/") for n in names)


@pytest.fixture(scope="module")
def target_install(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("nonedit")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir"]
    cmd += ["--target", str(target), str(wheel)]
    proc = _run(cmd, target, _quiet_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return target


def test_non_editable_install_runs_from_shipped_configs(target_install, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _quiet_env(PYTHONPATH=str(target_install))
    probe = (
        "import bayling_duplex.config as h; print(h.__file__); print(h.config_dir()); "
        "print(h.recipes_dir())"
    )
    proc = _run([sys.executable, "-c", probe], elsewhere, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, configs, recipes = proc.stdout.split()
    shipped = target_install / IN_WHEEL
    assert Path(module).is_relative_to(target_install)  # not the editable checkout
    assert Path(configs) == shipped / "configs"
    assert Path(recipes) == shipped / "data_recipes"

    sft = _run(
        [sys.executable, "-m", "bayling_duplex.train", "sft", "--cfg", "job"], elsewhere, env
    )
    assert sft.returncode == 0, sft.stdout[-3000:] + sft.stderr[-3000:]
    for line in ("model:\n  kind: tiny", "data:\n  path: data/speech_demo", "train:\n  epochs:"):
        assert line in sft.stdout

    build = _run(
        [sys.executable, "-m", "bayling_duplex.data", "build", "--cfg", "job"], elsewhere, env
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert (
        "recipe:\n  name: speech_demo" in build.stdout
    )  # the recipe group (configs/recipe) shipped
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # --cfg job writes nothing


# -- the lookup order of repo_root(), in process -------------------------------------------


def _fake_tree(folder: Path) -> Path:
    for name in SHIPPED:
        (folder / name).mkdir(parents=True)
    return folder


@pytest.fixture
def installed_layout(tmp_path, monkeypatch):
    """hydra.py seen as installed in site-packages: no checkout above it, shipped copy optional."""
    package = tmp_path / "site-packages" / "bayling_duplex"
    package.mkdir(parents=True)
    monkeypatch.setattr(cli_hydra, "_PACKAGE", package)
    monkeypatch.setattr(cli_hydra, "SHIPPED", package / "_shipped")
    monkeypatch.delenv(cli_hydra.ROOT_ENV, raising=False)
    return package


def test_editable_checkout_reads_the_live_repo(monkeypatch):
    monkeypatch.delenv(cli_hydra.ROOT_ENV, raising=False)
    if cli_hydra._PACKAGE != REPO / "src" / "bayling_duplex":
        pytest.skip("bayling_duplex is not imported from this checkout")
    assert cli_hydra.repo_root() == REPO
    assert cli_hydra.config_dir() == REPO / "configs"
    assert cli_hydra.recipes_dir() == REPO / "data_recipes"


def test_installed_package_uses_its_shipped_copy(installed_layout):
    shipped = _fake_tree(installed_layout / "_shipped")
    assert cli_hydra.repo_root() == shipped
    assert cli_hydra.config_dir() == shipped / "configs"


def test_a_checkout_above_site_packages_is_not_taken(installed_layout):
    # a venv inside a clone: the installed copy must not read that clone's (other) files
    _fake_tree(installed_layout.parents[1])
    shipped = _fake_tree(installed_layout / "_shipped")
    assert cli_hydra.repo_root() == shipped


def test_env_wins_and_is_checked(installed_layout, tmp_path, monkeypatch):
    _fake_tree(installed_layout / "_shipped")
    clone = _fake_tree(tmp_path / "clone")
    monkeypatch.setenv(cli_hydra.ROOT_ENV, str(clone))
    assert cli_hydra.repo_root() == clone
    monkeypatch.setenv(cli_hydra.ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(cli_hydra.ConfigError, match=r"BAYLING_DUPLEX_ROOT=.*nowhere"):
        cli_hydra.repo_root()


def test_nothing_found_names_every_place_looked(installed_layout):
    with pytest.raises(cli_hydra.ConfigError) as err:
        cli_hydra.repo_root()
    message = str(err.value)
    assert "BAYLING_DUPLEX_ROOT" in message
    assert "src/bayling_duplex" in message
    assert str(installed_layout / "_shipped") in message
