"""drift-scan on real worktrees with opskit's real hooks installed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from opskit.base import config
from opskit.base.clock import FakeClock
from opskit.base.config import Settings
from opskit.git import files as gitfiles
from opskit.guard import drift
from opskit.storage.journal import Journal
from opskit.wiring import hooks
from tests.support.gitsandbox import Sandbox, git, make_sandbox, rev


@dataclass
class Env:
    sb: Sandbox
    conf: Path
    notes: Path  # what the `command` notify channel received
    state_dir: Path

    @property
    def settings(self) -> Settings:
        return config.load(self.conf)

    def deployed(self, sha: str | None = None, service: str = "svc") -> str:
        """What the pipeline does: record the commit it made live."""
        sha = sha or rev(self.sb.worktree)
        j = Journal(self.state_dir)
        j.deploy_finish(j.deploy_start(service, sha, previous=None, chain=None), "healthy")
        return sha


def service_toml(name: str, sb: Sandbox) -> str:
    return (f'[service.{name}]\nrepo = "{sb.bare}"\nworktree = "{sb.worktree}"\n'
            f'drift_ignore = ["*.pid", "logs/"]\nnotify = ["t"]\n')


@pytest.fixture
def env(sandbox: Sandbox, write_config, tmp_path: Path, state_dir: Path) -> Env:
    notes = tmp_path / "notes.txt"
    (sandbox.worktree / ".gitignore").write_text("*.log\n")
    git(sandbox.worktree, "add", ".gitignore")
    git(sandbox.worktree, "commit", "-q", "--no-verify", "-m", "ignore logs")
    git(sandbox.worktree, "push", "-q", "origin", "master")
    conf = write_config(f'[notify.t]\ntype = "command"\ncommand = "cat >> {notes}; echo >> {notes}"\n'
                        + service_toml("svc", sandbox))
    e = Env(sandbox, conf, notes, state_dir)
    hooks.install(e.settings, e.settings.service("svc"))
    e.deployed()
    return e


def tree_sum(root: Path) -> str:
    """Every file's path, mode and bytes outside .git, plus the refs: what a scan must not touch."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for f in sorted(filenames):
            p = Path(dirpath) / f
            h.update(str(p.relative_to(root)).encode() + oct(p.lstat().st_mode).encode())
            h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
    h.update(git(root, "for-each-ref").stdout.encode() + git(root, "rev-parse", "HEAD").stdout.encode())
    return h.hexdigest()


def scan_json(opskit, env: Env, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = opskit("--config", str(env.conf), "drift-scan", "--json", *args)
    doc = json.loads(r.stdout)
    # the contract: exit 1 exactly when some service drifted (or could not be healed), else 0
    drifted = any(s["findings"] or s.get("heal_error") for s in doc["services"])
    assert r.returncode == (1 if drifted else 0), r.stdout + r.stderr
    return r.returncode, doc


def kinds(doc: dict, service: str = "svc") -> dict[str, list[str]]:  # type: ignore[type-arg]
    [svc] = [s for s in doc["services"] if s["service"] == service]
    out: dict[str, list[str]] = {}
    for f in svc["findings"]:
        out.setdefault(f["kind"], []).append(f.get("path") or f.get("detail", ""))
    return out


# --- what it finds --------------------------------------------------------------------------

def test_clean_worktree_exits_0(env: Env, opskit) -> None:
    r = opskit("--config", str(env.conf), "drift-scan")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "svc: clean"


def test_a_file_name_with_an_escape_sequence_is_shown_not_obeyed(env: Env, opskit) -> None:
    # A pushed or hand-made file name reaches an operator's terminal through the hourly report.
    (env.sb.worktree / "x\x1b]0;owned\x07\x1b[2J.txt").write_text("dropped on production\n")
    r = opskit("--config", str(env.conf), "drift-scan")
    assert r.returncode == 1
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "x\\x1b]0;owned\\x07\\x1b[2J.txt" in r.stdout


def test_edited_file_named_and_nothing_changed(env: Env, opskit) -> None:
    wt = env.sb.worktree
    (wt / "app.txt").write_text("hand-fixed on prod\n")
    (wt / "notes.md").write_text("untracked\n")
    (wt / "app.pid").write_text("123\n")  # drift_ignore *.pid
    (wt / "logs").mkdir()
    (wt / "logs" / "today").write_text("x\n")  # drift_ignore logs/
    (wt / "debug.log").write_text("x\n")  # .gitignore
    before = tree_sum(wt)
    r = opskit("--config", str(env.conf), "drift-scan")
    assert r.returncode == 1
    assert "modified" in r.stdout and "app.txt" in r.stdout and "notes.md" in r.stdout
    for quiet in ("app.pid", "logs/today", "debug.log"):
        assert quiet not in r.stdout
    code, doc = scan_json(opskit, env)
    assert code == 1 and kinds(doc) == {"modified": ["app.txt"], "untracked": ["notes.md"]}
    assert tree_sum(wt) == before  # no file changed without --heal


def test_deleted_and_staged_files(env: Env, opskit) -> None:
    wt = env.sb.worktree
    (wt / "app.txt").unlink()
    (wt / "new.txt").write_text("n\n")
    git(wt, "add", "new.txt")
    _, doc = scan_json(opskit, env)
    assert kinds(doc) == {"deleted": ["app.txt"], "staged": ["new.txt"]}


def test_commit_refused_but_no_verify_bypass_is_named(env: Env, opskit) -> None:
    wt = env.sb.worktree
    (wt / "app.txt").write_text("hotfix\n")
    refused = git(wt, "commit", "-qam", "hotfix", check=False)
    assert refused.returncode != 0  # the lockdown hook works
    git(wt, "commit", "-q", "--no-verify", "-am", "hotfix on prod")
    sha = rev(wt)
    r = opskit("--config", str(env.conf), "drift-scan")
    assert r.returncode == 1
    assert f"bypass               {sha[:12]} hotfix on prod" in r.stdout
    _, doc = scan_json(opskit, env)
    k = kinds(doc)
    assert k["bypass"] == [f"{sha[:12]} hotfix on prod"] and "1 ahead, 0 behind" in k["ahead"][0]


def test_detached_and_behind(env: Env, opskit) -> None:
    wt = env.sb.worktree
    git(wt, "checkout", "-q", "--detach")
    _, doc = scan_json(opskit, env)
    assert list(kinds(doc)) == ["detached"]
    git(wt, "checkout", "-q", "master")
    git(env.sb.dev, "pull", "-q", "origin", "master")
    env.sb.commit({"app.txt": "v2\n"}, "v2")
    # canonical moved (fetched in: its pre-receive hook would rightly refuse a direct push),
    # and the pipeline has not deployed it
    git(env.sb.bare, "fetch", "-q", str(env.sb.dev), "master:master")
    _, doc = scan_json(opskit, env)
    assert list(kinds(doc)) == ["behind"] and "0 ahead, 1 behind" in kinds(doc)["behind"][0]


def test_wrong_branch_and_diverged(env: Env, opskit) -> None:
    wt = env.sb.worktree
    git(wt, "checkout", "-q", "-b", "hotfix")  # same commit, another branch
    code, doc = scan_json(opskit, env)
    assert code == 1 and kinds(doc) == {"wrong-branch": ["HEAD is on hotfix, not master"]}
    git(wt, "checkout", "-q", "master")
    # A bypass commit on prod while the canonical branch moved on: each has what the other lacks.
    (wt / "app.txt").write_text("prod hotfix\n")
    git(wt, "commit", "-q", "--no-verify", "-am", "hotfix on prod")
    git(env.sb.dev, "pull", "-q", "origin", "master")
    env.sb.commit({"other.txt": "v2\n"}, "v2")
    git(env.sb.bare, "fetch", "-q", str(env.sb.dev), "master:master")
    code, doc = scan_json(opskit, env)
    k = kinds(doc)
    assert code == 1 and sorted(k) == ["bypass", "diverged"], k
    assert k["diverged"][0].endswith("the canonical repo lacks HEAD")  # the tip is not in the worktree
    git(wt, "fetch", "-q", str(env.sb.bare), "master")  # now both commits are here: counted
    _, doc = scan_json(opskit, env)
    assert "1 ahead, 1 behind" in kinds(doc)["diverged"][0]


def test_never_deployed_is_one_finding(sandbox: Sandbox, write_config, opskit) -> None:
    conf = write_config(service_toml("svc", sandbox).replace('notify = ["t"]\n', ""))
    s = config.load(conf)
    hooks.install(s, s.service("svc"))
    r = opskit("--config", str(conf), "drift-scan", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and list(kinds(doc)) == ["never-deployed"]


def test_hooks_missing_modified_and_switched_off(env: Env, opskit) -> None:
    wt_hooks = env.sb.worktree / ".git" / "hooks"
    (wt_hooks / "pre-commit").unlink()
    with open(env.sb.bare / "hooks" / "pre-receive", "a") as f:
        f.write("# tweaked by hand\n")
    _, doc = scan_json(opskit, env)
    k = kinds(doc)
    assert k == {"hook-missing": [str(wt_hooks / "pre-commit")],
                 "hook-modified": [str(env.sb.bare / "hooks" / "pre-receive")]}
    git(env.sb.worktree, "config", "core.hooksPath", "/dev/null")
    _, doc = scan_json(opskit, env)
    assert any("core.hooksPath=/dev/null" in d for d in kinds(doc)["hooks-path"])


def test_hooks_never_installed_is_drift(sandbox: Sandbox, write_config, opskit, state_dir) -> None:
    conf = write_config(service_toml("svc", sandbox).replace('notify = ["t"]\n', ""))
    j = Journal(state_dir)
    j.deploy_finish(j.deploy_start("svc", rev(sandbox.worktree), previous=None, chain=None), "healthy")
    r = opskit("--config", str(conf), "drift-scan")
    assert r.returncode == 1 and "hooks-not-installed" in r.stdout


def test_many_services_in_parallel(env: Env, tmp_path: Path, write_config, opskit) -> None:
    extra = {f"s{i}": make_sandbox(tmp_path / f"s{i}") for i in range(4)}
    text = env.conf.read_text() + "".join(service_toml(n, sb) for n, sb in extra.items())
    conf = write_config(text, name="many.toml")
    s = config.load(conf)
    for n, sb in extra.items():
        env.deployed(rev(sb.worktree), service=n)
    for svc in s.services.values():  # the hooks name the config file they load
        hooks.install(s, svc)
    (extra["s2"].worktree / "stray.txt").write_text("x\n")
    r = opskit("--config", str(conf), "drift-scan", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1
    drifted = {x["service"]: x["drift"] for x in doc["services"]}
    assert drifted == {"svc": False, "s0": False, "s1": False, "s2": True, "s3": False}
    assert kinds(doc, "s2") == {"untracked": ["stray.txt"]}
    r = opskit("--config", str(conf), "drift-scan", "s0", "s1")
    assert r.returncode == 0 and r.stdout.splitlines() == ["s0: clean", "s1: clean"]


def test_running_deploy_is_skipped(env: Env, opskit) -> None:
    (env.sb.worktree / "app.txt").write_text("being deployed\n")
    j = Journal(env.state_dir)
    with subprocess.Popen(["sleep", "30"]) as holder:
        did = j.deploy_start("svc", rev(env.sb.worktree), previous=None, chain=None)
        j.conn.execute("UPDATE deploys SET pid = ? WHERE id = ?", (holder.pid, did))
        r = opskit("--config", str(env.conf), "drift-scan")
        holder.kill()
    assert r.returncode == 0 and "skipped: deploy" in r.stdout
    r = opskit("--config", str(env.conf), "drift-scan")  # its holder is gone: scanned again
    assert r.returncode == 1 and "app.txt" in r.stdout


# --- bad input: exit 2 --------------------------------------------------------------------

def test_not_a_git_repo_exit_2(env: Env, tmp_path: Path, write_config, opskit) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    conf = write_config(env.conf.read_text().replace(str(env.sb.worktree), str(plain)), name="bad.toml")
    r = opskit("--config", str(conf), "drift-scan")
    assert r.returncode == 2
    assert "not a git checkout" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = opskit("--config", str(env.conf), "drift-scan", "nosuch")
    assert r.returncode == 2 and "unknown service 'nosuch'" in r.stderr


def test_unreadable_hooks_folder_exit_2(env: Env, monkeypatch) -> None:
    def denied(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    # As root nothing is unreadable, so the read itself is made to fail.
    monkeypatch.setattr(drift, "_fast_hook_states", denied)
    report = drift.scan(env.settings, Journal(env.state_dir), notify=False)
    assert report.exit_code == 2 and "hooks folder unreadable" in (report.services[0].error or "")


# --- heal ---------------------------------------------------------------------------------

def test_heal_saves_every_byte_then_restores(env: Env, opskit) -> None:
    wt = env.sb.worktree
    deployed = rev(wt)
    git(wt, "commit", "-q", "--no-verify", "--allow-empty", "-m", "bypass commit")
    bypass = rev(wt)
    (wt / "app.txt").write_text("hand edit\n")
    (wt / "sub").mkdir()
    (wt / "sub" / "new.bin").write_bytes(bytes(range(256)) * 3)
    (wt / "link").symlink_to("app.txt")
    (wt / "app.pid").write_text("42\n")  # ignored drift: stays
    r = opskit("--config", str(env.conf), "drift-scan", "--heal")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "healed: drifted state saved in refs/opskit/drift/" in r.stdout
    [ref] = git(wt, "for-each-ref", "--format=%(refname)", "refs/opskit/drift/").stdout.split()
    assert git(wt, "show", f"{ref}:app.txt").stdout == "hand edit\n"
    blob = subprocess.run(["git", "show", f"{ref}:sub/new.bin"], cwd=wt, capture_output=True,
                          check=True).stdout
    assert blob == bytes(range(256)) * 3
    assert git(wt, "cat-file", "-p", f"{ref}:link").stdout == "app.txt"
    assert git(wt, "merge-base", "--is-ancestor", bypass, ref, check=False).returncode == 0
    # restored: on the branch, at the deployed commit, drift files gone, ignored ones kept
    assert git(wt, "symbolic-ref", "--short", "HEAD").stdout.strip() == "master"
    assert rev(wt) == deployed and (wt / "app.txt").read_text() == "v1\n"
    assert not (wt / "sub").exists() and not (wt / "link").is_symlink()
    assert (wt / "app.pid").read_text() == "42\n"
    r = opskit("--config", str(env.conf), "drift-scan")
    assert r.returncode == 0, r.stdout
    ev = Journal(env.state_dir).last("drift.healed")
    assert ev is not None and ev.data["ref"] == ref and ev.data["previous_head"] == bypass
    assert sorted(ev.data["removed"]) == ["link", "sub/new.bin"]


def test_heal_aborts_when_a_file_changes_while_it_is_saved(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # A writer on prod (the app itself, an operator) changes a file between the save and the
    # checkout: the check of every saved byte must stop the heal, or that write is lost.
    from opskit.git.repo import Git

    wt = env.sb.worktree
    (wt / "app.txt").write_text("hand edit\n")
    real_save = Git.save_state

    def save_then_race(self: Git, ref: str, message: str, include_untracked: bool = True) -> str | None:
        saved = real_save(self, ref, message, include_untracked)
        (wt / "app.txt").write_text("written during the save\n")
        return saved

    monkeypatch.setattr(Git, "save_state", save_then_race)
    report = drift.scan(env.settings, Journal(env.state_dir), heal=True, lock_wait=0)
    [rep] = report.services
    assert report.exit_code == 1 and rep.healed is None
    assert rep.heal_error is not None and "app.txt changed while it was being saved" in rep.heal_error
    assert (wt / "app.txt").read_text() == "written during the save\n"  # nothing lost
    assert Journal(env.state_dir).last("drift.healed") is None
    monkeypatch.setattr(Git, "save_state", real_save)
    report = drift.scan(env.settings, Journal(env.state_dir), heal=True, lock_wait=0)
    assert report.exit_code == 0 and report.services[0].healed is not None
    ref = report.services[0].healed["ref"]
    assert _blob(wt, f"{ref}:app.txt") == b"written during the save\n"


def test_heal_without_a_deploy_changes_nothing(sandbox: Sandbox, write_config, opskit) -> None:
    conf = write_config(service_toml("svc", sandbox).replace('notify = ["t"]\n', ""))
    s = config.load(conf)
    hooks.install(s, s.service("svc"))
    (sandbox.worktree / "app.txt").write_text("edit\n")
    before = tree_sum(sandbox.worktree)
    r = opskit("--config", str(conf), "drift-scan", "--heal")
    assert r.returncode == 1 and "cannot heal" in r.stdout
    assert tree_sum(sandbox.worktree) == before


def _drift_ref(wt: Path) -> str:
    [ref] = git(wt, "for-each-ref", "--format=%(refname)", "refs/opskit/drift/").stdout.split()
    return ref


def _blob(wt: Path, spec: str) -> bytes:
    return subprocess.run(["git", "cat-file", "blob", spec], cwd=wt, capture_output=True, check=True).stdout


def test_heal_keeps_the_staged_version_too(env: Env, opskit) -> None:
    # `git add` then edit again (MM), and a staged-only file: the index holds a version the
    # worktree does not. Saved like `git stash`: ref^1 = HEAD, ref^2 = the index on HEAD.
    wt = env.sb.worktree
    head = rev(wt)
    (wt / "app.txt").write_text("STAGED fix the operator git-added\n")
    (wt / "forced.log").write_text("staged although .gitignore'd\n")
    git(wt, "add", "app.txt")
    git(wt, "add", "-f", "forced.log")
    staged = rev(wt, ":app.txt")
    (wt / "app.txt").write_text("later worktree edit\n")
    r = opskit("--config", str(env.conf), "drift-scan", "--heal")
    assert r.returncode == 0, r.stdout + r.stderr
    ref = _drift_ref(wt)
    assert rev(wt, f"{ref}^1") == head and rev(wt, f"{ref}^2^") == head
    assert rev(wt, f"{ref}^2:app.txt") == staged
    assert _blob(wt, f"{ref}:app.txt") == b"later worktree edit\n"
    assert _blob(wt, f"{ref}^2:forced.log") == _blob(wt, f"{ref}:forced.log") == b"staged although .gitignore'd\n"
    # reachable from the ref alone (not only from a reflog or the old index): survives gc
    assert staged in git(wt, "rev-list", "--objects", ref).stdout
    assert (wt / "app.txt").read_text() == "v1\n" and not (wt / "forced.log").exists()


def test_heal_saves_raw_bytes_and_modes(env: Env, opskit) -> None:
    # `git add` would run `* text=auto` and store LF; the saved tree must hold what was on disk.
    wt = env.sb.worktree
    (wt / ".gitattributes").write_text("* text=auto\n")
    (wt / "app.txt").write_bytes(b"edited on production\r\nwith CRLF\r\n")
    (wt / "run.sh").write_bytes(b"#!/bin/sh\r\necho hi\r\n")
    (wt / "run.sh").chmod(0o755)
    (wt / "link").symlink_to("no such target")
    r = opskit("--config", str(env.conf), "drift-scan", "--heal")
    assert r.returncode == 0, r.stdout + r.stderr
    ref = _drift_ref(wt)
    assert _blob(wt, f"{ref}:app.txt") == b"edited on production\r\nwith CRLF\r\n"
    assert _blob(wt, f"{ref}:run.sh") == b"#!/bin/sh\r\necho hi\r\n"
    modes = {ln.split("\t")[1]: ln.split()[0] for ln in git(wt, "ls-tree", ref).stdout.splitlines()}
    assert modes["run.sh"] == "100755" and modes["link"] == "120000" and modes["app.txt"] == "100644"
    assert _blob(wt, f"{ref}:link") == b"no such target"
    assert (wt / "app.txt").read_text() == "v1\n" and not (wt / "run.sh").exists()


def test_heal_keeps_every_stage_of_a_conflict(env: Env, opskit) -> None:
    # An unmerged index (a merge or stash pop that stopped): base, ours and theirs are saved.
    wt = env.sb.worktree
    base, ours, theirs = (git(wt, "hash-object", "-w", "--stdin", input=t).stdout.strip()
                          for t in ("v1\n", "ours\n", "theirs\n"))
    stages = "".join(f"100644 {oid} {n}\tapp.txt\n" for n, oid in ((1, base), (2, ours), (3, theirs)))
    git(wt, "update-index", "--index-info", input=f"0 {'0' * 40}\tapp.txt\n" + stages)
    (wt / "app.txt").write_text("<<<<<<< ours\nours\n=======\ntheirs\n>>>>>>> theirs\n")
    assert git(wt, "status", "--porcelain").stdout == "UU app.txt\n"
    r = opskit("--config", str(env.conf), "drift-scan", "--heal")
    assert r.returncode == 0, r.stdout + r.stderr
    ref = _drift_ref(wt)
    assert rev(wt, f"{ref}^2:app.txt") == ours
    assert [rev(wt, f"{ref}^3:stage{n}/app.txt") for n in (1, 2, 3)] == [base, ours, theirs]
    assert _blob(wt, f"{ref}:app.txt").startswith(b"<<<<<<< ours")
    assert git(wt, "status", "--porcelain").stdout == ""


def test_heal_waits_for_no_deploy(env: Env) -> None:
    # A heal moves the worktree: never while a deploy, revert or chain holds the lock.
    from opskit.base.lock import ServiceLock

    wt = env.sb.worktree
    (wt / "app.txt").write_text("hand edit\n")
    (wt / "stray.txt").write_text("x\n")
    before = tree_sum(wt)
    with ServiceLock(env.state_dir, "svc", wait=0, what="deploy"):
        report = drift.scan(env.settings, Journal(env.state_dir), heal=True, lock_wait=0)
        assert tree_sum(wt) == before  # nothing saved, nothing restored
    [rep] = report.services
    assert report.exit_code == 1 and rep.healed is None
    assert rep.heal_error is not None and "cannot heal" in rep.heal_error and "lock held by pid" in rep.heal_error
    assert Journal(env.state_dir).last("drift.healed") is None
    report = drift.scan(env.settings, Journal(env.state_dir), heal=True, lock_wait=0)
    assert report.exit_code == 0 and report.services[0].healed is not None
    assert (wt / "app.txt").read_text() == "v1\n"


# --- notifications only on state change ----------------------------------------------------

def test_notifies_on_change_and_renotifies_after_drift_renotify(env: Env) -> None:
    clock = FakeClock()
    j = Journal(env.state_dir, clock)
    s = env.settings

    def scan() -> drift.ServiceDrift:
        return drift.scan(s, j, clock=clock).services[0]

    def received() -> int:
        return env.notes.read_text().count("svc:") if env.notes.exists() else 0

    assert scan().change is None and received() == 0  # clean, nothing to say
    (env.sb.worktree / "app.txt").write_text("edit\n")
    assert scan().change == "detected" and received() == 1
    assert "app.txt" in env.notes.read_text()
    for _ in range(5):  # the hourly cron run, same drift: silence
        clock.advance(3600)
        assert scan().change is None
    assert received() == 1
    clock.advance(3600 * 19)  # 24 h since the notification (drift_renotify default)
    assert scan().change == "reminder" and received() == 2
    (env.sb.worktree / "stray.txt").write_text("x\n")  # the drift changed: say so now
    clock.advance(60)
    assert scan().change == "detected" and received() == 3
    (env.sb.worktree / "stray.txt").unlink()
    git(env.sb.worktree, "checkout", "-q", "--", "app.txt")
    assert scan().change == "cleared" and received() == 4
    types = [e.type for e in j.query(type_prefix="drift.")]
    assert types == ["drift.detected", "drift.detected", "drift.detected", "drift.cleared"]
    assert j.kv_get("drift", "svc") is None


def test_no_notify_is_a_look_only(env: Env, opskit) -> None:
    (env.sb.worktree / "app.txt").write_text("edit\n")
    r = opskit("--config", str(env.conf), "drift-scan", "--no-notify")
    assert r.returncode == 1
    j = Journal(env.state_dir)
    assert j.query(type_prefix="drift.") == [] and j.kv_get("drift", "svc") is None
    assert not env.notes.exists()
    r = opskit("--config", str(env.conf), "drift-scan")  # the scheduled scan still alerts
    assert r.returncode == 1 and "app.txt" in env.notes.read_text()


def test_repo_info_read_from_files_matches_git(sandbox, tmp_path) -> None:
    # drift-scan reads hooks folder and branch tip from files in the common layout; it must
    # agree with git, and step aside (None) whenever config could redirect hooks.
    from opskit.git.repo import Git
    from tests.support.gitsandbox import git, rev

    bare = Git(sandbox.bare)
    info = gitfiles._read_repo_info(sandbox.bare, "master")
    assert info is not None and info.tip == rev(sandbox.bare, "refs/heads/master")
    assert info.hooks == (sandbox.bare / "hooks").resolve()
    git(sandbox.bare, "pack-refs", "--all")
    assert not (sandbox.bare / "refs" / "heads" / "master").exists()
    packed = gitfiles._read_repo_info(sandbox.bare, "master")
    assert packed is not None and packed.tip == bare.branch_tip("master")
    assert gitfiles._read_repo_info(sandbox.bare, "nope") is None
    wt = gitfiles._read_repo_info(sandbox.worktree, None)
    assert wt is not None and wt.hooks == (sandbox.worktree / ".git" / "hooks").resolve()
    git(sandbox.worktree, "config", "core.hooksPath", str(tmp_path / "elsewhere"))
    assert gitfiles._read_repo_info(sandbox.worktree, None) is None
    git(sandbox.bare, "config", "include.path", str(tmp_path / "extra.cfg"))
    assert gitfiles._read_repo_info(sandbox.bare, "master") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the account whose worktree root heals")
def test_roots_heal_never_unlinks_through_a_folder_swapped_for_a_link(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Heal as root removes the untracked files of an account's worktree. If the account swaps a
    folder for a link to root's files between the check and the unlink, root must not follow it:
    the account removes its own files, so the link leads only where the account may delete."""
    from tests.support.accounts import throwaway_account

    with throwaway_account("opskdr") as pw:
        os.chmod(tmp_path, 0o755)
        wt, victims = tmp_path / "wt", tmp_path / "roots"
        (wt / "sub").mkdir(parents=True)
        (wt / "sub" / "f").write_text("drift\n")
        (wt / "stray").write_text("drift\n")
        victims.mkdir()
        (victims / "f").write_text("root's\n")
        for p in (wt, wt / "sub", wt / "sub" / "f", wt / "stray"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        real_is_dir = Path.is_dir
        swapped: list[bool] = []

        def is_dir_then_swap(self: Path) -> bool:
            if not swapped:  # the account's move, right after root looked
                swapped.append(True)
                os.rename(wt / "sub", wt / "sub.old")
                os.symlink(victims, wt / "sub")
            return real_is_dir(self)

        monkeypatch.setattr(Path, "is_dir", is_dir_then_swap)
        removed = drift._remove_untracked(drift.Git(wt), ["sub/f", "stray"])
        monkeypatch.undo()
        assert swapped
        assert (victims / "f").read_text() == "root's\n"
        assert "sub/f" not in removed and "stray" in removed and not (wt / "stray").exists()
