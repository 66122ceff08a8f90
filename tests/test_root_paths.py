"""Every root path works on the system install (docs/ARCHITECTURE.md, who may do what).

Real accounts on the real `install.sh --system`: root's approve of a parked change merges and
deploys (its merge runs where the service's account can write); root's `drift-scan --heal`
heals in one run and leaves the real index alone; `journal recover` as root keeps the state
dir's group and modes, so the next push still deploys; an outsider (not in the group) gets the
one-line exit 2 with the fix on every path. Needs root; skipped otherwise, with the reason.
Module scope: one server for the file, so `-k` runs any test alone.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import Server, need_root, run_as, server_fixture

pytestmark = [pytest.mark.slow, pytest.mark.skipif(need_root() is not None, reason=need_root() or "")]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    for srv in server_fixture():
        _set_up(srv)
        yield srv


def _git_dev(srv: Server, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in srv.ssh_env().items()), "git", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180, check=False)


def _events(srv: Server, after: int = 0) -> list[dict[str, object]]:
    r = srv.ops("root", "events", "--json", "--limit", "1000")
    assert r.returncode == 0, r.stderr
    return [e for e in (json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()) if int(str(e["id"])) > after]


def _last_id(srv: Server) -> int:
    return max((int(str(e["id"])) for e in _events(srv)), default=0)


def _set_up(srv: Server) -> None:
    """The app under opskit (review exit 3: every feature branch waits for a human), one good
    deploy of master pushed over SSH, and a developer's clone at srv.base/dev."""
    r = srv.ops("root", "add", "app", "--worktree", str(srv.worktree),
                "--deploy", 'echo "deployed $OPSKIT_SHA as $(id -un)" >> "$HOME/deploys.log"',
                "--health-url", f"http://127.0.0.1:{srv.port}/health", "--repo", str(srv.repo),
                "--host", "127.0.0.1", "--direct-push")
    assert r.returncode == 0, r.stdout + r.stderr
    text = srv.config.read_text()
    text = text.replace("[service.app]\n", '[service.app]\nreview = "exit 3"\nsandbox = "none"\n', 1)
    text = text.replace(f'url = "http://127.0.0.1:{srv.port}/health"',
                        f'url = "http://127.0.0.1:{srv.port}/health"\nwindow = 1.0\nperiod = 0.2\n'
                        "timeout = 0.5\nfailures = 2\nstartup = 2.0", 1)
    srv.config.write_text(text)
    dev = srv.base / "dev"
    assert _git_dev(srv, "clone", "-q", srv.url(), str(dev)).returncode == 0
    _push_master(srv, "v2\n", "v2: the first deploy through opskit")


def _push_master(srv: Server, content: str, subject: str) -> subprocess.CompletedProcess[str]:
    dev = srv.base / "dev"
    assert _git_dev(srv, "checkout", "-q", "master", cwd=dev).returncode == 0
    assert _git_dev(srv, "pull", "-q", "--ff-only", "origin", "master", cwd=dev).returncode == 0
    (dev / "app.txt").write_text(content)
    assert _git_dev(srv, "commit", "-q", "-am", subject, cwd=dev).returncode == 0
    push = _git_dev(srv, "push", "origin", "master", cwd=dev)
    assert push.returncode == 0 and "healthy" in push.stderr.lower(), push.stderr
    assert (srv.worktree / "app.txt").read_text() == content
    return push


def _as_git(srv: Server, *args: str) -> str:
    r = run_as(srv.git, ["git", "-C", str(srv.worktree), *args])
    assert r.returncode == 0, r.stderr
    return r.stdout


# --- root approves a parked change: it merges and deploys ------------------------------------------

def _park(srv: Server, branch: str, content: str) -> int:
    dev = srv.base / "dev"
    n = _last_id(srv)
    _git_dev(srv, "checkout", "-q", "master", cwd=dev)
    _git_dev(srv, "pull", "-q", "--ff-only", "origin", "master", cwd=dev)
    assert _git_dev(srv, "checkout", "-q", "-b", branch, cwd=dev).returncode == 0
    (dev / "feature.txt").write_text(content)
    _git_dev(srv, "add", "feature.txt", cwd=dev)
    assert _git_dev(srv, "commit", "-q", "-m", f"{branch}: needs a human", cwd=dev).returncode == 0
    push = _git_dev(srv, "push", "origin", branch, cwd=dev)
    assert push.returncode == 0, push.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parked = [e for e in _events(srv, n) if e["type"] == "review.needs-human"]
        if parked:
            return int(str(parked[0]["data"]["approval"]))  # type: ignore[index]
        time.sleep(0.3)
    raise AssertionError(f"{branch} was not parked: {push.stderr}\n{_events(srv, n)}")


def test_root_approve_merges_and_deploys(server: Server) -> None:
    srv = server
    change = _park(srv, "feature/approved-by-root", "from a feature branch\n")
    before = run_as(srv.git, ["git", "-C", str(srv.repo), "rev-parse", "master"]).stdout.strip()
    r = srv.ops("root", "approve", str(change), record=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Permission denied" not in r.stdout + r.stderr
    tip = run_as(srv.git, ["git", "-C", str(srv.repo), "rev-parse", "master"]).stdout.strip()
    assert tip != before
    parents = run_as(srv.git, ["git", "-C", str(srv.repo), "rev-list", "--parents", "-n1", tip]).stdout.split()[1:]
    assert parents[0] == before, parents
    assert (srv.worktree / "feature.txt").read_text() == "from a feature branch\n"
    assert _as_git(srv, "rev-parse", "HEAD").strip() == tip
    # Nothing of the merge is left behind in /tmp, root's or the account's.
    assert not [p for p in Path("/tmp").glob("opskit-merge-*") if p.owner() in ("root", srv.git)]


def test_a_failed_root_merge_waits_again(server: Server) -> None:
    """A merge that cannot land does not spend the decision: the change waits again, and says so."""
    srv = server
    change = _park(srv, "feature/conflicts", "one side\n")
    # master changes the same file meanwhile: the merge conflicts.
    dev = srv.base / "dev"
    _git_dev(srv, "checkout", "-q", "master", cwd=dev)
    (dev / "feature.txt").write_text("the other side\n")
    _git_dev(srv, "add", "feature.txt", cwd=dev)
    _git_dev(srv, "commit", "-q", "-m", "master: the same file", cwd=dev)
    assert _git_dev(srv, "push", "origin", "master", cwd=dev).returncode == 0
    r = srv.ops("root", "approve", str(change))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "conflicts with master" in r.stdout and f"opskit approve {change}" in r.stdout, r.stdout
    pending = srv.ops("root", "pending", "app", "--json")
    rows = {int(d["id"]): d for d in (json.loads(ln) for ln in pending.stdout.splitlines() if ln.strip())}
    assert rows[change]["status"] == "parked", rows[change]


# --- heal as root: one run, the real index untouched ------------------------------------------

def test_root_heal_heals_in_one_run_and_leaves_the_index_alone(server: Server) -> None:
    srv = server
    head = _as_git(srv, "rev-parse", "HEAD").strip()
    run_as(srv.git, ["/bin/sh", "-c", f"echo hotfix >> {srv.worktree}/app.txt && echo new > {srv.worktree}/stray.txt"])
    assert _as_git(srv, "diff", "--cached", "--name-only") == ""
    n = _last_id(srv)
    r = srv.ops("root", "drift-scan", "app", "--heal", record=True)
    assert "cannot heal" not in r.stdout + r.stderr, r.stdout + r.stderr
    kinds = [e["type"] for e in _events(srv, n)]
    assert "drift.healed" in kinds, (kinds, r.stdout, r.stderr)
    assert _as_git(srv, "diff", "--cached", "--name-only") == "", "the real index was changed"
    assert _as_git(srv, "status", "--porcelain") == ""
    assert _as_git(srv, "rev-parse", "HEAD").strip() == head
    # The drifted state is kept, byte for byte, in the heal's ref.
    healed = next(e for e in _events(srv, n) if e["type"] == "drift.healed")
    ref = str(healed["data"]["ref"])  # type: ignore[index]
    saved = run_as(srv.git, ["git", "-C", str(srv.worktree), "show", f"{ref}:app.txt"]).stdout
    assert saved.endswith("hotfix\n"), saved
    assert run_as(srv.git, ["git", "-C", str(srv.worktree), "show", f"{ref}:stray.txt"]).stdout == "new\n"
    again = srv.ops("root", "drift-scan", "app")
    assert again.returncode == 0, again.stdout + again.stderr


# --- journal recover as root: the journal stays the group's ---------------------------------------

def test_root_recover_keeps_the_group_and_the_next_push_deploys(server: Server) -> None:
    srv = server
    r = srv.ops("root", "journal", "recover", "--force", record=True)
    assert r.returncode == 0, r.stdout + r.stderr
    group = os.stat(srv.state).st_gid
    for f in srv.state.glob("journal.db*"):
        if ".damaged-" in f.name:
            continue
        st = os.stat(f)
        assert st.st_gid == group, (f, st.st_gid, group)
        assert stat.S_IMODE(st.st_mode) & 0o060 == 0o060, (f, oct(st.st_mode))
    push = _push_master(srv, "v3 after recover\n", "v3: after journal recover")
    assert "readonly" not in push.stderr.lower(), push.stderr


# --- an outsider: one line, exit 2, the real group and the fix, on every path ---------------------

OUTSIDER_PATHS = [("status",), ("events",), ("deploy", "app"), ("approve", "1"), ("incident",),
                  ("notify", "--flush"), ("doctor",), ("cron-check",), ("pending",), ("drift-scan", "app")]


def _one_line_fix(srv: Server, r: subprocess.CompletedProcess[str], what: str) -> str:
    assert r.returncode == 2, (what, r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, (what, r.stderr)
    assert "internal error" not in lines[0] and "Traceback" not in r.stderr, (what, r.stderr)
    return lines[0]


@pytest.mark.parametrize("args", OUTSIDER_PATHS, ids=lambda a: " ".join(a))
def test_outsider_system_config_exit_2(server: Server, args: tuple[str, ...]) -> None:
    srv = server
    line = _one_line_fix(srv, srv.ops(srv.outsider, *args), " ".join(args))
    assert f"usermod -aG {srv.group} {srv.outsider}" in line, line


@pytest.mark.parametrize("args", OUTSIDER_PATHS, ids=lambda a: " ".join(a))
def test_outsider_readable_config_state_dir_exit_2(server: Server, args: tuple[str, ...]) -> None:
    """A config the outsider can read (a copy) over the system state dir: the state dir's group."""
    srv = server
    copy = srv.base / "outsider.toml"
    if not copy.exists():
        copy.write_text(srv.config.read_text().replace("[opskit]\n", f'[opskit]\nstate_dir = "{srv.state}"\n', 1)
                        if "state_dir" not in srv.config.read_text() else srv.config.read_text())
        os.chmod(copy, 0o644)
    r = run_as(srv.outsider, [srv.opskit, "--config", str(copy), *args],
               env={"PATH": f"{srv.bindir}:/usr/local/bin:/usr/bin:/bin"})
    line = _one_line_fix(srv, r, " ".join(args))
    assert str(srv.state) in line and f"usermod -aG {srv.group} {srv.outsider}" in line, line


def test_outsider_default_config_search_exit_2(server: Server) -> None:
    """No --config: a candidate the search cannot look into (`sudo -u` keeping HOME=/root, a
    ~/.config/opskit that is the group's) is the one-line exit 2, not an internal error."""
    srv = server
    home = Path(pwd.getpwnam(srv.outsider).pw_dir)
    (home / ".config").mkdir(exist_ok=True)
    link = home / ".config" / "opskit"
    if not link.is_symlink():
        link.symlink_to(srv.etc)
    env = {"PATH": f"{srv.bindir}:/usr/local/bin:/usr/bin:/bin"}
    r = run_as(srv.outsider, [srv.opskit, "status"], env=env, cwd=home)
    line = _one_line_fix(srv, r, "status (search)")
    assert f"usermod -aG {srv.group} {srv.outsider}" in line, line
    root_home = run_as(srv.outsider, [srv.opskit, "status"], env={**env, "HOME": "/root"}, cwd=home)
    line = _one_line_fix(srv, root_home, "status (HOME=/root)")
    assert "usermod -aG root" not in line and "/root" in line, line


def test_root_only_file_advice_is_true(server: Server) -> None:
    """A root:root 0700 folder: adding the account to group root is not the fix."""
    srv = server
    private = srv.base / "root-only"
    private.mkdir(mode=0o700, exist_ok=True)
    (private / "opskit.toml").write_text(f'[opskit]\nstate_dir = "{srv.state}"\n')
    r = run_as(srv.outsider, [srv.opskit, "--config", str(private / "opskit.toml"), "status"],
               env={"PATH": f"{srv.bindir}:/usr/local/bin:/usr/bin:/bin"})
    line = _one_line_fix(srv, r, "root-only config")
    assert "usermod -aG root" not in line, line
    assert "root" in line and str(private) in line, line
