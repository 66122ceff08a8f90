"""The trust rules a one-line slip would break without another test noticing.

- Root reads nothing another account can write: a config or .env someone else can change (the
  file, its group, the folder it is in) is refused with one line, exit 2, before anything runs.
- Root does a service's work as the service's account, with that account's groups, not root's.
- Pushed code is told an allowlist of our environment, matched on whole names.
- The sandbox hides /run without network, and every service's bare repo, not only its own.

Each test is checked against the bug it guards: that rule broken by hand, the test fails.
The stages live under /var/tmp, not pytest's /tmp: the sandbox's fresh /tmp would hide anything
there by accident, and a service's account could not reach root's 0700 pytest folders.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opskit.base import accounts, bwrap, config
from opskit.chain.feature import ChainResult, run_now
from opskit.storage.journal import Event, Journal
from tests.support.accounts import throwaway_account
from tests.support.gitsandbox import Sandbox, git, make_sandbox
from tests.support.pipeline import toml_value

NOT_ROOT = os.geteuid() != 0
needs_root = pytest.mark.skipif(NOT_ROOT, reason="needs root: the rule is about what root does, and the test "
                                "creates the other account")
needs_bwrap = pytest.mark.skipif(bwrap.available() is not None,
                                 reason=f"bubblewrap cannot run here: {bwrap.available()}")


@pytest.fixture
def base() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="opskit-trust-", dir="/var/tmp"))
    os.chmod(root, 0o755)  # a service's account must reach its repo inside
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write_config(path: Path, services: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for name, fields in services.items():
        lines.append(f"[service.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def feature(sb: Sandbox, files: dict[str, str], name: str = "feature/x") -> str:
    """A commit on branch `name` pushed to the bare repo (straight: no hooks are installed)."""
    git(sb.dev, "checkout", "-q", "-B", name, f"origin/{sb.branch}")
    sha = sb.commit(files, "feature work")
    git(sb.dev, "push", "-q", "origin", name)
    return sha


def chain(cfg: Path, sha: str, service: str = "svc", branch: str = "feature/x") -> tuple[ChainResult, list[Event]]:
    """The chain of a push of `sha`, in this process (what the push's worker runs), and its events."""
    settings = config.load(cfg)
    journal = Journal(settings.state_dir)
    result = run_now(settings, journal, service, f"refs/heads/{branch}", sha, chain=f"c{uuid.uuid4().hex[:8]}",
                     write=lambda _line: None, lock_wait=30)
    return result, journal.query(service=service, chain=result.chain)


def step(events: list[Event], type_: str) -> Event:
    found = [e for e in events if e.type == type_]
    assert len(found) == 1, [(e.type, e.data.get("reason")) for e in events]
    return found[0]


# --- root refuses a config or .env another account can change ----------------------------------

UNSAFE = ["env-writable-by-every-account", "env-owned-by-another-account", "config-writable-by-a-group",
          "config-in-another-accounts-folder"]


@needs_root
@pytest.mark.parametrize("how", UNSAFE)
def test_root_refuses_a_config_or_env_another_account_can_change_and_runs_nothing(
        base: Path, opskit, how: str) -> None:
    """The .env names the command of a `command` channel (`${NOTIFY_CMD}`): whoever can change the
    file, its folder, or is in a group that can write it, would have root run what they like."""
    etc, marker = base / "etc", base / "marker"
    cfg = etc / "opskit.toml"
    cfg.parent.mkdir()
    cfg.write_text('[opskit]\nnotify = ["c"]\n\n[notify.c]\ntype = "command"\ncommand = "${NOTIFY_CMD}"\n')
    env = etc / ".env"
    env.write_text(f"NOTIFY_CMD=touch {marker}\n")
    for p in (etc, cfg, env):
        assert p.stat().st_uid == 0 and not p.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    # the control: all root's, the channel's command runs (so the refusal below is what stops it)
    r = opskit("--config", str(cfg), "notify", "hello")
    assert (r.returncode, marker.exists()) == (0, True), r.stderr
    marker.unlink()
    with throwaway_account("opsktr") as pw:
        group = grp.getgrgid(pw.pw_gid).gr_name
        assert pw.pw_gid != 0
        if how == "env-writable-by-every-account":
            env.chmod(0o666)
            named, problem = env, "is writable by every account"
        elif how == "env-owned-by-another-account":
            os.chown(env, pw.pw_uid, -1)
            named, problem = env, f"is owned by uid {pw.pw_uid} ({pw.pw_name}), not root"
        elif how == "config-writable-by-a-group":
            os.chown(cfg, 0, pw.pw_gid)
            cfg.chmod(0o664)
            named, problem = cfg, f"is writable by group {group}"
        else:
            os.chown(etc, pw.pw_uid, -1)
            named, problem = cfg, f"is in {etc}, which is owned by uid {pw.pw_uid} ({pw.pw_name}), not root"
        what = ".env" if named == env else "config"
        r = opskit("--config", str(cfg), "notify", "hello")
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr == (f"opskit: refusing to run as root with {what} {named} {problem}; "
                            f"fix it: chown root {named} && chmod go-w {named}\n")
        assert r.stdout == "" and not marker.exists()


# --- root works for a service as its account, with that account's groups ----------------------

IDS = "{{ id -u; id -g; id -G; }} > {out}/{what}.ids"


@pytest.fixture
def account() -> Iterator[pwd.struct_passwd]:
    """A throwaway account that is also in a group of its own besides its primary one: a drop that
    cleared the groups, or kept root's, would show."""
    with throwaway_account("opsktr") as pw:
        extra = f"opsktg{uuid.uuid4().hex[:8]}"
        subprocess.run(["groupadd", "--system", extra], check=True, capture_output=True)
        try:
            subprocess.run(["usermod", "-a", "-G", extra, pw.pw_name], check=True, capture_output=True)
            yield pw
        finally:
            subprocess.run(["gpasswd", "-d", pw.pw_name, extra], check=False, capture_output=True)
            subprocess.run(["groupdel", extra], check=False, capture_output=True)


@needs_root
@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_root_runs_deploy_test_and_review_as_the_account_with_its_own_groups(
        base: Path, account: pwd.struct_passwd, sandbox: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each writes `id -u; id -g; id -G`: exactly the account's uid, gid and groups (root's group
    0 among them would let pushed code and the deploy command write what group root may).
    Sandboxed, test and review print them instead (the root filesystem is read-only there), and
    only uid and gid count: in bwrap's user namespace every other group reads as nobody's."""
    if sandbox == "bwrap" and bwrap.available() is not None:
        pytest.skip(f"bubblewrap cannot run here: {bwrap.available()}")
    pw = account
    if sandbox == "bwrap" and any(subprocess.run(
            ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", "test", "-x", p],
            check=False).returncode != 0 for p in {sys.prefix, sys.base_prefix}):
        # The sandbox shows opskit's interpreter again; this one (under /root, pyenv's) the account
        # cannot reach, so bwrap could not start (install.sh --system puts it where every account
        # can). These steps need only sh and id.
        monkeypatch.setattr(bwrap, "_interpreter", lambda hidden: [])
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    assert len(set(groups)) == 2 and 0 not in groups and pw.pw_uid != 0
    sb = make_sandbox(base / "sb")
    sha = feature(sb, {"app.txt": "v2\n"})
    out = base / "out"
    out.mkdir()
    for d in (sb.bare, sb.worktree, out):
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(d)], check=True)
    step_ids = "echo ids: $(id -u) $(id -g)" if sandbox == "bwrap" else None
    cfg = write_config(base / "etc" / "opskit.toml", {"svc": {
        "repo": str(sb.bare), "worktree": str(sb.worktree), "branch": sb.branch, "direct_push": False,
        "feature_branches": ["feature/*"], "merge": "merge", "sandbox": sandbox,
        "test": step_ids or IDS.format(out=out, what="test"), "review": step_ids or IDS.format(out=out, what="review"),
        "deploy": IDS.format(out=out, what="deploy")}})
    result, events = chain(cfg, sha)
    assert result.status == "deployed", result
    want = f"{pw.pw_uid}\n{pw.pw_gid}\n{' '.join(str(g) for g in groups)}\n"
    for what in ("deploy",) if step_ids else ("test", "review", "deploy"):
        ids = out / f"{what}.ids"
        assert (what, ids.read_text()) == (what, want)
        assert ids.stat().st_uid == pw.pw_uid  # written by the account, not by root
    if step_ids:
        for what in ("test", "review"):
            ev = step(events, f"{what}.pass")
            assert ev.data["sandbox"] == "bwrap" and f"ids: {pw.pw_uid} {pw.pw_gid}" in ev.data["tail"].splitlines(), ev.data
    assert (sb.worktree / "app.txt").read_text() == "v2\n"  # the merge was deployed


# --- pushed code is told an allowlist of our environment, whole names only -----------------------

SECRETS = {"USER_TOKEN": "tok-user-5e1d", "LANGCHAIN_API_KEY": "lc-key-9a2b", "PATH_SECRET": "path-secret-c7f4"}


def test_pushed_test_sees_the_locale_but_no_variable_that_only_begins_like_an_allowed_one(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """USER, LANG and PATH are allowed; USER_TOKEN, LANGCHAIN_API_KEY and PATH_SECRET only begin
    with them. Run by our own account (no drop: the drop's clean environment would hide a leak)."""
    for k, v in {**SECRETS, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}.items():
        monkeypatch.setenv(k, v)
    sb = make_sandbox(base / "sb")
    sha = feature(sb, {"app.txt": "v2\n"})
    cfg = write_config(base / "etc" / "opskit.toml", {"svc": {
        "repo": str(sb.bare), "worktree": str(sb.worktree), "branch": sb.branch, "direct_push": False,
        "feature_branches": ["feature/*"], "sandbox": "none", "test": "env; exit 1"}})
    assert accounts.drop_for_service(config.load(cfg).service("svc")) is None
    result, events = chain(cfg, sha)
    assert result.status == "test-failed", result
    tail = step(events, "test.fail").data["tail"]
    lines = tail.splitlines()
    names = {ln.split("=", 1)[0] for ln in lines if "=" in ln}
    assert "LC_ALL=C.UTF-8" in lines and "LANG=C.UTF-8" in lines, tail
    assert "OPSKIT_HEAD=" + sha in lines and "PATH" in names, tail  # the step's env is what was printed
    assert names & set(SECRETS) == set(), tail
    assert not any(v in tail for v in SECRETS.values()), tail


# --- the sandbox hides /run without network, and every service's bare repo ---------------------

def show(*paths: Path) -> str:
    """A step that prints each file, or why it could not, then fails (the tail is the report)."""
    return "".join(f'echo "== {p}"; cat "{p}" 2>&1; echo\n' for p in paths) + "exit 1\n"


@pytest.fixture
def run_secret() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="opskit-test-", dir="/run"))
    try:
        os.chmod(d, 0o755)
        (d / "secret").write_text("run-secret-3b8e\n")
        (d / "secret").chmod(0o644)
        yield d / "secret"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_bwrap
@pytest.mark.skipif(NOT_ROOT, reason="needs root to make a file under /run")
@pytest.mark.parametrize("network", [False, True])
def test_run_is_hidden_from_a_step_without_sandbox_network(base: Path, run_secret: Path, network: bool) -> None:
    """A socket under /run (Docker's, D-Bus's) is a way out of a sandbox without network."""
    sb = make_sandbox(base / "sb")
    control = base / "visible"
    control.write_text("visible-0d6a\n")
    sha = feature(sb, {"check.sh": show(run_secret, control)})
    cfg = write_config(base / "etc" / "opskit.toml", {"svc": {
        "repo": str(sb.bare), "worktree": str(sb.worktree), "branch": sb.branch, "direct_push": False,
        "feature_branches": ["feature/*"], "sandbox_network": network, "test": "sh check.sh"}})
    result, events = chain(cfg, sha)
    ev = step(events, "test.fail")
    tail = ev.data["tail"]
    assert result.status == "test-failed" and ev.data["sandbox"] == "bwrap", ev.data
    assert "visible-0d6a" in tail, tail  # the step ran, in the sandbox, and reads what is not hidden
    if network:  # the control: with the network, /run is the host's
        assert "run-secret-3b8e" in tail, tail
        return
    assert "run-secret-3b8e" not in tail
    assert f"cat: {run_secret}: No such file or directory" in tail.splitlines(), tail


@needs_bwrap
def test_another_services_bare_repo_is_hidden_from_a_step(base: Path) -> None:
    """One host's services trust each other no more than they trust the pushed code."""
    sb, other = make_sandbox(base / "sb"), make_sandbox(base / "other", name="other")
    (other.bare / "secret").write_text("other-repo-secret-61c0\n")
    control = other.root / "visible"  # beside the other repo, not in it
    control.write_text("visible-0d6a\n")
    sha = feature(sb, {"check.sh": show(other.bare / "secret", other.bare / "config", control)})
    cfg = write_config(base / "etc" / "opskit.toml", {
        "svc": {"repo": str(sb.bare), "worktree": str(sb.worktree), "branch": sb.branch, "direct_push": False,
                "feature_branches": ["feature/*"], "test": "sh check.sh"},
        "other": {"repo": str(other.bare), "worktree": str(other.worktree), "branch": other.branch}})
    result, events = chain(cfg, sha)
    ev = step(events, "test.fail")
    tail = ev.data["tail"]
    assert result.status == "test-failed" and ev.data["sandbox"] == "bwrap", ev.data
    assert "visible-0d6a" in tail, tail
    assert "other-repo-secret-61c0" not in tail and "[core]" not in tail, tail
    for f in (other.bare / "secret", other.bare / "config"):
        assert f"cat: {f}: No such file or directory" in tail.splitlines(), tail


# --- the account root becomes: its environment, which account, and what crosses back ----------

ANN = pwd.struct_passwd(("ann", "x", 54321, 54321, "", "/home/ann", ""))


def test_user_env_is_the_accounts_own_with_only_the_kept_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    given = {"LANG": "C.UTF-8", "LC_ALL": "C", "TERM": "xterm", "OPSKIT_CONFIG": "/etc/o.toml",
             "GIT_AUTHOR_NAME": "A", "HOME": "/root", "USER": "root", "PATH": "/root/bin", "SHELL": "/bin/zsh",
             "SECRET_TOKEN": "s", "LANGCHAIN_API_KEY": "k", "XLC_": "1"}
    own = {"HOME": "/home/ann", "USER": "ann", "LOGNAME": "ann", "SHELL": "/bin/sh",
           "PATH": f"{bindir}:{accounts.SYSTEM_PATH}"}
    assert accounts.user_env(ANN, given) == {"LANG": "C.UTF-8", "LC_ALL": "C", "TERM": "xterm",
                                             "OPSKIT_CONFIG": "/etc/o.toml", "GIT_AUTHOR_NAME": "A", **own}
    bash = pwd.struct_passwd(("bob", "x", 54322, 54322, "", "/home/bob", "/bin/bash"))
    assert accounts.user_env(bash, {})["SHELL"] == "/bin/bash"
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    monkeypatch.setenv("SECRET_TOKEN", "s")
    env = accounts.user_env(ANN)  # no env given: this process's
    assert env["LANG"] == "de_DE.UTF-8" and "SECRET_TOKEN" not in env
    argv, env = accounts.as_user(ANN, ["git", Path("/srv/app")], {"LANG": "C"})
    assert argv == [accounts.SETPRIV, "--reuid=54321", "--regid=54321", "--init-groups", "--", "git", "/srv/app"]
    assert env == {"LANG": "C", **own}


@needs_root
def test_dubious_ownership_drop_for_and_service_account_name_the_owner(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = pwd.getpwnam("nobody")
    theirs = base / "theirs"
    theirs.mkdir()
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    said = accounts.dubious_ownership(theirs, "fatal: detected dubious ownership in repository at ...")
    assert said == (f"{theirs}: git refuses to work here (\"dubious ownership\"): the repository belongs to "
                    "nobody and you are root; run opskit as root (sudo opskit …, it runs git as nobody) "
                    "or as nobody (sudo -u nobody opskit …); do not add safe.directory, which lets the "
                    "repository's config run programs as you")
    assert accounts.dubious_ownership(theirs, "fatal: not a git repository") is None
    nameless = base / "nameless"
    nameless.mkdir()
    os.chown(nameless, 54329, 54329)
    assert "belongs to another account and you are root; run opskit as root (sudo opskit …, it runs git as " \
           "another account)" in (accounts.dubious_ownership(nameless, "dubious ownership") or "")
    # drop_for: the owner, or the nearest existing parent's for a path not made yet; never root
    assert accounts.drop_for(theirs / "not" / "yet") == nobody
    assert accounts.drop_for(base) is None
    daemon = base / "daemon"
    daemon.mkdir()
    os.chown(daemon, 1, 1)
    assert accounts.drop_for(daemon) == pwd.getpwuid(1)
    # service_account: [service] user, else the owner of an absolute repo or worktree that exists
    mine = base / "mine"
    mine.mkdir()
    monkeypatch.chdir(base)
    svc = types.SimpleNamespace(user="", repo="theirs", worktree=str(mine))  # a relative repo: not looked at
    assert accounts.service_account(svc) == pwd.getpwuid(0)
    svc = types.SimpleNamespace(user="", repo=str(base / "gone"), worktree=str(theirs))
    assert accounts.service_account(svc) == nobody
    assert accounts.service_account(types.SimpleNamespace(user="nobody", repo="", worktree="")) == nobody


@needs_root
def test_as_account_brings_back_the_result_the_error_and_a_death(base: Path) -> None:
    from opskit.base.errors import ConfigError, UsageError

    nobody = pwd.getpwnam("nobody")
    assert accounts.as_account(nobody, lambda a: [os.geteuid(), a], 7) == [nobody.pw_uid, 7]
    assert accounts.as_account(nobody, lambda: "x" * 200_000) == "x" * 200_000  # more than one read of the pipe

    def fail(e: BaseException) -> None:
        raise e

    for given in (UsageError("bad input: the fix"), ConfigError("bad key: the fix")):
        with pytest.raises(UsageError) as u:
            accounts.as_account(nobody, fail, given)
        assert type(u.value) is UsageError and str(u.value) == str(given)
    with pytest.raises(accounts.AccountError) as e:
        accounts.as_account(nobody, fail, ValueError("boom"))
    assert str(e.value) == "boom"
    with pytest.raises(accounts.AccountError) as e:
        accounts.as_account(nobody, fail, ValueError())
    assert str(e.value) == "ValueError"
    with pytest.raises(accounts.AccountError) as e:
        accounts.as_account(nobody, lambda: os.kill(os.getpid(), signal.SIGKILL))
    assert str(e.value) == "the process working as nobody died (-9) before saying how it went"
