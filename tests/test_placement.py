"""Config that would deploy the wrong code is refused: exit 2, one line naming both services
(or both keys), and nothing changed — no hook installed, no deploy run, no journal written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gitsandbox import Sandbox, make_sandbox


@pytest.fixture
def two(tmp_path: Path) -> tuple[Sandbox, Sandbox]:
    return make_sandbox(tmp_path / "a", "a"), make_sandbox(tmp_path / "b", "b")


def _config(tmp_path: Path, a: dict[str, str], b: dict[str, str]) -> Path:
    lines = []
    for name, svc in (("a", a), ("b", b)):
        lines.append(f"[service.{name}]")
        lines += [f'{k} = "{v}"' for k, v in svc.items()]
        lines.append('deploy = "true"\ndirect_push = true\n')
    p = tmp_path / "conf" / "opskit.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines))
    return p


def _run(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=60, check=False, env=dict(os.environ))


def _case(name: str, sa: Sandbox, sb: Sandbox) -> tuple[dict[str, str], dict[str, str], list[str]]:
    a = {"repo": str(sa.bare), "worktree": str(sa.worktree)}
    b = {"repo": str(sb.bare), "worktree": str(sb.worktree)}
    if name == "same worktree":
        b["worktree"] = a["worktree"]
        return a, b, ["service.b.worktree", "service.a.worktree", "same directory"]
    if name == "same bare repo":
        b["repo"] = a["repo"]
        return a, b, ["service.b.repo", "service.a.repo", "same bare repo"]
    if name == "worktree is repo":
        b["worktree"] = b["repo"]
        return a, b, ["service.b.worktree", "bare repo itself", str(sb.bare)]
    if name == "worktree is a bare repo":
        b["worktree"] = a["repo"]
        return a, b, ["service.b.worktree", "bare repository"]
    assert name == "worktree inside another"
    inner = sa.worktree / "sub"
    inner.mkdir()
    b["worktree"] = str(inner)
    return a, b, ["service.b.worktree", "service.a.worktree", "inside"]


CASES = ["same worktree", "same bare repo", "worktree is repo", "worktree is a bare repo", "worktree inside another"]


@pytest.mark.parametrize("case", CASES)
def test_placement_that_cannot_be_right_is_refused(tmp_path: Path, two: tuple[Sandbox, Sandbox], case: str) -> None:
    sa, sb = two
    a, b, words = _case(case, sa, sb)
    cfg = _config(tmp_path, a, b)
    state = Path(os.environ["OPSKIT_STATE_DIR"])
    hooks_before = sorted(p.name for p in (sa.bare / "hooks").iterdir())
    head_a = (sa.worktree / "app.txt").read_text() if (sa.worktree / "app.txt").exists() else None
    for args in (["doctor"], ["hooks", "install", "b"], ["deploy", "b"]):
        r = _run(cfg, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert sorted(p.name for p in (sa.bare / "hooks").iterdir()) == hooks_before
    assert not (state / "journal.db").exists()
    assert ((sa.worktree / "app.txt").read_text() if (sa.worktree / "app.txt").exists() else None) == head_a


def test_two_services_in_their_own_places_load(tmp_path: Path, two: tuple[Sandbox, Sandbox]) -> None:
    from opskit.base import config

    sa, sb = two
    cfg = _config(tmp_path, {"repo": str(sa.bare), "worktree": str(sa.worktree)},
                  {"repo": str(sb.bare), "worktree": str(sb.worktree)})
    assert sorted(config.load(cfg).services) == ["a", "b"]


def test_placement_reads_each_path_once_however_many_services(tmp_path: Path, monkeypatch) -> None:
    # Every command and hook loads the whole config: a check of every pair made 90,000 realpath
    # calls for 300 services (seconds per `opskit events`). Count them: linear in the services.
    from opskit.base import placement
    from opskit.base.errors import ConfigError

    class Svc:
        def __init__(self, i: int) -> None:
            self.name, self.pull_mode = f"s{i}", False
            self.repo, self.worktree = str(tmp_path / "git" / f"s{i}.git"), tmp_path / "srv" / f"s{i}"

    calls = []
    real = os.path.realpath
    monkeypatch.setattr(placement.os.path, "realpath", lambda p: calls.append(p) or real(p))
    placement.check([Svc(i) for i in range(200)], lambda k, p, f: ConfigError(f"{k}: {p}"))
    assert len(calls) == 400  # one worktree and one repo a service

    nested = [Svc(i) for i in range(200)]
    nested[150].worktree = nested[3].worktree / "inner"
    with pytest.raises(ConfigError, match=r"service\.s150\.worktree: .* inside service\.s3\.worktree"):
        placement.check(nested, lambda k, p, f: ConfigError(f"{k}: {p}"))
