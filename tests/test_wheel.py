"""opskit as users install it: a built wheel and a plain `pip install .`, each into a fresh
virtualenv, no editable install and no checkout to lean on.

The hook and crontab templates used to be read from the checkout (`Path(__file__).parents[2]`),
so only the editable install in a clone worked: `pip install .` gave "hook template … No such
file or directory". Each install here runs `hooks install`, `cron install --dry-run` and `demo`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.gitsandbox import make_sandbox

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kw)  # type: ignore[call-overload]


def _fresh_venv(where: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    return where / "bin" / "python"


def _pip(python: Path, *args: str) -> None:
    r = _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args])
    assert r.returncode == 0, r.stderr[-2000:]


def _source_copy(tmp: Path) -> Path:
    """The committed tree as a clone has it (links kept), without .venv or build leftovers."""
    dst = tmp / "src-copy"
    shutil.copytree(ROOT, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"))
    return dst


def _exercise(python: Path, tmp: Path) -> None:
    """hooks install, cron install --dry-run and demo, from an interpreter outside the checkout."""
    bindir = python.parent
    opskit = bindir / "opskit"
    site = _run([str(python), "-c", "import opskit, sys; print(opskit.__file__)"], cwd=tmp).stdout.strip()
    assert site.startswith(str(bindir.parent)), f"opskit imported from {site}, not from the fresh venv"

    sb = make_sandbox(tmp / "sb")
    config = tmp / "opskit.toml"
    config.write_text(f'[opskit]\nstate_dir = "{tmp / "state"}"\n\n[service.app]\nrepo = "{sb.bare}"\n'
                      f'worktree = "{sb.worktree}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "OPSKIT_", "PYTHON"))}
    env.update(HOME=os.environ["HOME"], GIT_CONFIG_NOSYSTEM="1")
    r = _run([str(opskit), "--config", str(config), "hooks", "install", "app"], cwd=tmp, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    hook = (sb.bare / "hooks" / "post-receive").read_text()
    assert "# opskit-hook: post-receive" in hook and str(python) in hook

    r = _run([str(opskit), "--config", str(config), "cron", "install", "--dry-run"], cwd=tmp, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "drift-scan" in r.stdout and "# >>> opskit" in r.stdout

    r = _run([str(opskit), "demo"], cwd=tmp, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "the loop worked" in r.stdout


def test_the_built_wheel_carries_the_templates_and_works(tmp_path: Path) -> None:
    src = _source_copy(tmp_path)
    dist = tmp_path / "dist"
    r = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
              "-w", str(dist), str(src)])
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = dist.glob("opskit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("pre-receive", "post-receive", "pre-commit", "pre-merge-commit"):
        assert f"opskit/wiring/templates/hooks/{name}" in names
        # The wheel holds the template's bytes, not a link back into a checkout.
        assert zipfile.ZipFile(wheel).read(f"opskit/wiring/templates/hooks/{name}") == (ROOT / "hooks" / name).read_bytes()
    assert "opskit/wiring/templates/cron/opskit.crontab" in names
    shutil.rmtree(src)  # nothing of the checkout is left to fall back on
    python = _fresh_venv(tmp_path / "venv")
    _pip(python, str(wheel))
    _exercise(python, tmp_path)


def test_pip_install_dot_is_not_editable_and_works(tmp_path: Path) -> None:
    src = _source_copy(tmp_path)
    python = _fresh_venv(tmp_path / "venv")
    _pip(python, str(src))
    shutil.rmtree(src)
    _exercise(python, tmp_path)
