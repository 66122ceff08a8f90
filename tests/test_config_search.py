"""Where opskit looks for its config and its state dir, as the README promises."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opskit.base import config


def test_config_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(os.environ["HOME"])  # the test's own HOME (conftest)
    user = home / ".config" / "opskit" / "opskit.toml"
    here = tmp_path / "cwd" / "opskit.toml"
    env_cfg = tmp_path / "env.toml"
    explicit = tmp_path / "explicit.toml"
    for p in (user, here, env_cfg, explicit):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    monkeypatch.chdir(here.parent)
    monkeypatch.setenv("OPSKIT_CONFIG", str(env_cfg))
    assert config.find_config(explicit) == explicit          # --config first
    assert config.find_config() == env_cfg                   # then $OPSKIT_CONFIG, even if ./ has one
    monkeypatch.delenv("OPSKIT_CONFIG")
    assert config.find_config() == here                      # then ./opskit.toml
    here.unlink()
    assert config.find_config() == user                      # then ~/.config/opskit/opskit.toml
    user.unlink()
    etc = Path("/etc/opskit/opskit.toml")
    assert config.find_config() == (etc if etc.is_file() else None)  # then /etc/opskit (never written here)
    monkeypatch.setenv("OPSKIT_CONFIG", str(tmp_path / "missing.toml"))
    assert config.find_config() == tmp_path / "missing.toml"  # named, so not searched past: load says it is missing


def test_state_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "s"))
    assert config.default_state_dir() == tmp_path / "s"
    monkeypatch.delenv("OPSKIT_STATE_DIR")
    if os.geteuid() != 0:
        pytest.skip("the root default (/var/lib/opskit) and an unprivileged account need root to check")
    assert config.default_state_dir() == Path("/var/lib/opskit")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to run as an unprivileged account")
    code = "from opskit.base.config import default_state_dir; print(default_state_dir())"
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join(sys.path)}
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code]
    reach = subprocess.run([*as_nobody[:-2], "-c", "import opskit"], env={**base, "HOME": str(tmp_path / "h")},
                           capture_output=True, text=True, check=False, timeout=60)
    if reach.returncode != 0:
        pytest.skip("an unprivileged account cannot import opskit from this checkout (it sits under a folder "
                    f"only root can enter): {reach.stderr.strip().splitlines()[-1:]}")
    out = subprocess.run(as_nobody, env={**base, "HOME": str(tmp_path / "h"), "XDG_STATE_HOME": str(tmp_path / "x")},
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # A host with a system install (/var/lib/opskit exists) gives every account that one.
    system = Path("/var/lib/opskit")
    assert out == str(system if system.is_dir() else tmp_path / "x" / "opskit")
    out = subprocess.run(as_nobody, env={**base, "HOME": str(tmp_path / "h")},
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert out == str(system if system.is_dir() else tmp_path / "h" / ".local" / "state" / "opskit")
