"""opskit hooks install / uninstall / status, against real repos and real pushes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from opskit.base.errors import UsageError
from opskit.wiring import hooks
from tests.support.gitsandbox import git, rev
from tests.support.hooks import Hooked, hooked_service, write_service_config

ALL = ("pre-receive", "post-receive", "pre-commit", "pre-merge-commit")


def snapshot(h: Hooked) -> dict[str, tuple[bytes, int]]:
    out = {}
    for folder in (h.sb.bare / "hooks", h.sb.worktree / ".git" / "hooks"):
        for p in sorted(folder.iterdir()):
            if not p.name.endswith(".sample"):
                out[str(p)] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
    return out


def states(h: Hooked) -> dict[str, str]:
    s = h.settings()
    return {st.name: st.state for st in hooks.hook_states(s, s.service(h.name))}


def test_install_twice_writes_the_same_files(tmp_path: Path, state_dir: Path, opskit) -> None:
    h = hooked_service(tmp_path, state_dir, install=False)
    r1 = opskit("--config", str(h.config), "hooks", "install", "svc", "--json")
    assert r1.returncode == 0, r1.stderr
    first = snapshot(h)
    assert {Path(p).name for p in first} == set(ALL)
    assert all(mode == 0o755 for _, mode in first.values())
    r2 = opskit("--config", str(h.config), "hooks", "install", "svc", "--json")
    assert r2.returncode == 0, r2.stderr
    assert snapshot(h) == first
    assert {c["action"] for c in json.loads(r2.stdout)["changes"]} == {"unchanged"}
    # Feature branches are rebased and deleted: only pre-receive guards the deploy branch.
    assert git(h.sb.bare, "config", "receive.denyNonFastForwards", check=False).returncode == 1
    assert git(h.sb.bare, "config", "receive.denyDeletes", check=False).returncode == 1
    st = opskit("--config", str(h.config), "hooks", "status", "svc", "--json")
    assert st.returncode == 0
    assert {s["state"] for s in json.loads(st.stdout)["states"]} == {"installed"}


def test_status_installed_modified_missing_foreign(tmp_path: Path, state_dir: Path, opskit) -> None:
    h = hooked_service(tmp_path, state_dir)
    assert set(states(h).values()) == {"installed"}
    pre_commit = h.sb.worktree / ".git" / "hooks" / "pre-commit"
    pre_commit.write_text(pre_commit.read_text() + "echo tampered\n")
    (h.sb.bare / "hooks" / "post-receive").unlink()
    (h.sb.worktree / ".git" / "hooks" / "pre-merge-commit").write_text("#!/bin/sh\nexit 0\n")
    assert states(h) == {"pre-receive": "installed", "post-receive": "missing",
                         "pre-commit": "modified", "pre-merge-commit": "foreign"}
    r = opskit("--config", str(h.config), "hooks", "status", "svc")
    assert r.returncode == 1
    assert "modified" in r.stdout and "missing" in r.stdout and "foreign" in r.stdout
    # A hook written for another interpreter is no longer what install writes now.
    s = h.settings()
    hooks.install(s, s.service("svc"), python="/usr/bin/python3")
    assert states(h)["pre-receive"] == "modified"
    hooks.install(s, s.service("svc"))
    assert set(states(h).values()) == {"installed"}


def test_foreign_hooks_are_chained_and_restored(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir, install=False, extra="direct_push = true\n")
    seen = tmp_path / "seen stdin"
    foreign_receive = f"#!/bin/sh\ncat > '{seen}'\necho from-foreign-hook\nexit 0\n"
    (h.sb.bare / "hooks" / "pre-receive").write_text(foreign_receive)
    (h.sb.bare / "hooks" / "pre-receive").chmod(0o755)
    foreign_commit = "#!/bin/sh\necho foreign lint failed >&2\nexit 7\n"
    (h.sb.worktree / ".git" / "hooks" / "pre-commit").write_text(foreign_commit)
    (h.sb.worktree / ".git" / "hooks" / "pre-commit").chmod(0o755)
    s = h.settings()
    report = hooks.install(s, s.service("svc"))
    assert {c.name for c in report.changes if "pre-opskit" in c.detail} == {"pre-receive", "pre-commit"}
    assert states(h)["pre-receive"] == "installed"

    # Chained with the same stdin; its output reaches the pusher; our policy still applies.
    old = h.sb.tip()
    new = h.sb.commit({"a.txt": "a\n"}, "a")
    r = h.sb.push("master")
    assert "from-foreign-hook" in r.stderr
    assert seen.read_text() == f"{old} {new} refs/heads/master\n"
    assert h.sb.tip() == new

    # The foreign hook's refusal still refuses, and is journaled as such.
    (h.sb.bare / "hooks" / "pre-receive.pre-opskit").write_text("#!/bin/sh\necho no way\nexit 1\n")
    h.sb.commit({"b.txt": "b\n"}, "b")
    r = h.sb.push("master", check=False)
    assert r.returncode != 0 and "no way" in r.stderr
    assert h.sb.tip() == new
    assert h.events("lockdown.blocked")[-1].data["rule"] == "chained-hook"

    # A failing foreign pre-commit fails the commit even with the glass broken.
    (h.sb.worktree / "x.txt").write_text("x\n")
    git(h.sb.worktree, "add", "x.txt")
    head = rev(h.sb.worktree)
    r = git(h.sb.worktree, "commit", "-m", "x", check=False, env={"OPSKIT_BREAK_GLASS": "fire"})
    assert r.returncode != 0 and "foreign lint failed" in r.stderr
    assert rev(h.sb.worktree) == head
    assert h.events("lockdown.breakglass") == []

    hooks.uninstall(s, s.service("svc"))
    assert (h.sb.bare / "hooks" / "pre-receive").read_text() == "#!/bin/sh\necho no way\nexit 1\n"
    assert (h.sb.worktree / ".git" / "hooks" / "pre-commit").read_text() == foreign_commit
    assert not (h.sb.bare / "hooks" / "post-receive").exists()
    assert not list((h.sb.bare / "hooks").glob("*.pre-opskit"))


def test_install_refuses_when_a_displaced_hook_would_be_overwritten(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir)
    hook = h.sb.worktree / ".git" / "hooks" / "pre-commit"
    hook.with_name("pre-commit.pre-opskit").write_text("#!/bin/sh\nexit 0\n")
    hook.write_text("#!/bin/sh\necho someone else\n")
    before = snapshot(h)
    s = h.settings()
    with pytest.raises(UsageError, match="pre-opskit"):
        hooks.install(s, s.service("svc"))
    assert snapshot(h) == before


def test_uninstall_removes_and_status_says_missing(tmp_path: Path, state_dir: Path, opskit) -> None:
    h = hooked_service(tmp_path, state_dir)
    r = opskit("--config", str(h.config), "hooks", "uninstall", "svc", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # one JSON object, nothing else on stdout
    assert doc["service"] == "svc" and doc["all_installed"] is False and doc["notes"] == []
    assert [(c["name"], c["where"], c["action"]) for c in doc["changes"]] == [
        ("pre-receive", "repo", "removed"), ("post-receive", "repo", "removed"),
        ("pre-commit", "worktree", "removed"), ("pre-merge-commit", "worktree", "removed")]
    assert {s["name"]: s["state"] for s in doc["states"]} == states(h) == dict.fromkeys(
        ["pre-receive", "post-receive", "pre-commit", "pre-merge-commit"], "missing")
    assert all(not Path(c["path"]).exists() for c in doc["changes"])
    assert set(states(h).values()) == {"missing"}
    # Without hooks the worktree accepts commits again.
    h.sb.commit({"f.txt": "f\n"}, "after uninstall", repo=h.sb.worktree)


def test_interpreter_path_with_dotdot_is_the_same_interpreter(tmp_path: Path, state_dir: Path) -> None:
    # A suite (or cron) started as .venv/bin/../bin/python is the same interpreter as
    # .venv/bin/python: hooks installed by one are not "modified" for the other.
    import shlex
    import subprocess
    import sys

    h = hooked_service(tmp_path, state_dir, install=False)
    plain = sys.executable
    dotted = os.path.join(os.path.dirname(plain), "..", os.path.basename(os.path.dirname(plain)),
                          os.path.basename(plain))
    assert dotted != plain and os.path.samefile(dotted, plain)
    env = {**os.environ, "OPSKIT_CONFIG": str(h.config)}
    for installer, checker in ((dotted, plain), (plain, dotted)):
        r = subprocess.run([installer, "-m", "opskit", "hooks", "install", "svc"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([checker, "-m", "opskit", "hooks", "status", "svc", "--json"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
        doc = json.loads(r.stdout)
        assert {s["name"]: s["state"] for s in doc["states"]} == dict.fromkeys(
            ["pre-receive", "post-receive", "pre-commit", "pre-merge-commit"], "installed"), (installer, checker)
        assert r.returncode == 0, r.stderr
    # and the hook names the interpreter without the detour
    assert f"\npython={shlex.quote(plain)}\n" in (h.sb.bare / "hooks" / "pre-receive").read_text()


def test_core_hooks_path_is_detected(tmp_path: Path, state_dir: Path, opskit) -> None:
    h = hooked_service(tmp_path, state_dir, install=False)
    git(h.sb.worktree, "config", "core.hooksPath", "/dev/null")
    r = opskit("--config", str(h.config), "hooks", "install", "svc")
    assert r.returncode == 2
    assert "core.hooksPath=/dev/null" in r.stderr and "--unset core.hooksPath" in r.stderr
    assert not (h.sb.bare / "hooks" / "pre-receive").exists()  # nothing changed
    s = h.settings()
    found = hooks.hooks_path_override(s.service("svc"))
    assert len(found) == 1 and found[0].startswith("worktree: core.hooksPath=/dev/null (local, ")
    st = opskit("--config", str(h.config), "hooks", "status", "svc", "--json")
    assert st.returncode == 1
    assert json.loads(st.stdout)["hooks_path"][0].startswith("worktree: core.hooksPath=/dev/null")

    # A deliberate shared hooks folder: --hooks-path-ok installs there, and it works.
    shared = tmp_path / "shared hooks"
    git(h.sb.worktree, "config", "core.hooksPath", str(shared))
    r = opskit("--config", str(h.config), "hooks", "install", "svc", "--hooks-path-ok")
    assert r.returncode == 0, r.stderr
    assert (shared / "pre-commit").is_file()
    assert set(states(h).values()) == {"installed"}
    (h.sb.worktree / "y.txt").write_text("y\n")
    git(h.sb.worktree, "add", "y.txt")
    assert git(h.sb.worktree, "commit", "-m", "y", check=False).returncode != 0


def test_install_needs_a_config_file(tmp_path: Path, opskit) -> None:
    r = opskit("hooks", "install", "svc", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == ("opskit: no config file: unknown service 'svc' (configured: none); "
                                "add a [service.svc] table or fix the name")


def test_pull_mode_installs_worktree_hooks_only(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir, install=False)
    write_service_config(h.config, h.sb, state_dir, repo="https://git.example.invalid/svc.git")
    s = h.settings()
    report = hooks.install(s, s.service("svc"))
    assert {c.name for c in report.changes} == {"pre-commit", "pre-merge-commit"}
    assert any("pull mode" in n for n in report.notes)
    assert not (h.sb.bare / "hooks" / "pre-receive").exists()
    assert set(states(h)) == {"pre-commit", "pre-merge-commit"}


def test_hostile_config_path_is_quoted_not_interpreted(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir, config_dir="co nf $(touch PWNED) 'q\" `touch PWNED2`")
    assert "$(touch PWNED)" in str(h.config)
    (h.sb.worktree / "z.txt").write_text("z\n")
    git(h.sb.worktree, "add", "z.txt")
    before = rev(h.sb.worktree)
    r = git(h.sb.worktree, "commit", "-m", "z", check=False, env={"OPSKIT_BREAK_GLASS": "quoted"})
    assert r.returncode == 0, r.stderr
    assert rev(h.sb.worktree) != before
    assert [e.data["reason"] for e in h.events("lockdown.breakglass")] == ["quoted"]
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_foreign_post_receive_is_chained_with_the_same_stdin(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir, install=False)
    seen = tmp_path / "post stdin"
    hook = h.sb.bare / "hooks" / "post-receive"
    hook.write_text(f"#!/bin/sh\ncat > '{seen}'\necho mirrored\nexit 3\n")
    hook.chmod(0o755)
    s = h.settings()
    hooks.install(s, s.service("svc"))
    new = h.sb.commit({"f.txt": "f\n"}, "f")
    r = h.sb.push("HEAD:refs/heads/feature/f")
    assert "remote: mirrored" in r.stderr
    assert seen.read_text() == f"{'0' * 40} {new} refs/heads/feature/f\n"
    # The foreign hook failing does not stop opskit's part: the pipeline still got the push.
    assert [e.data["new"] for e in h.events("push.received")] == [new]
