"""Ship ``configs/`` and ``data_recipes/`` inside the built package.

All metadata lives in ``pyproject.toml``; this file only adds one build step.
The two folders stay at the top of the repository (that is where the docs, the
cluster scripts and ``accelerate --config_file configs/...`` expect them), and
``build_py`` copies them into the build as ``bayling_duplex/_shipped/configs``
and ``bayling_duplex/_shipped/data_recipes``, so a wheel (or ``pip install .``)
carries them. Symlinks are followed (``configs/recipe`` points to
``data_recipes/``; a wheel cannot hold a link). ``MANIFEST.in`` puts both
folders into the sdist, so a wheel built from the sdist gets them too.

An editable install skips the copy: it reads the live files of the checkout
(see :func:`bayling_duplex.cli.hydra.repo_root`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("configs", "data_recipes")  # top-level folders copied into the package
DEST = Path("bayling_duplex", "_shipped")  # inside the build dir (and the installed package)


def _skipped(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__" or name.endswith((".pyc", ".pyo"))


def shipped_files(root: Path = HERE) -> list[tuple[Path, Path]]:
    """``(source file, path relative to _shipped/)`` for every file of :data:`SHIPPED`."""
    pairs = []
    for name in SHIPPED:
        src = root / name
        if not src.is_dir():
            raise FileNotFoundError(f"{src} is missing: the package build ships it")
        for folder, dirs, files in os.walk(src, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not _skipped(d))
            for file in sorted(f for f in files if not _skipped(f)):
                path = Path(folder, file)
                pairs.append((path, Path(name, path.relative_to(src))))
    return pairs


class build_py_with_configs(build_py):
    """``build_py`` that also copies :data:`SHIPPED` into ``<build_lib>/bayling_duplex/_shipped``."""

    def _targets(self) -> list[tuple[Path, Path]]:
        return [(src, Path(self.build_lib) / DEST / rel) for src, rel in shipped_files()]

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / DEST
        if dest.exists() and not self.dry_run:
            shutil.rmtree(dest)  # a stale copy must not keep a YAML deleted from the repo
        for src, target in self._targets():
            self.mkpath(str(target.parent))
            self.copy_file(str(src), str(target), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [str(target) for _, target in self._targets()]


setup(cmdclass={"build_py": build_py_with_configs})
