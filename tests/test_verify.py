"""verify-push against real remotes: local paths, file://, a real git daemon, a hung port."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from opskit.base import config
from opskit.base.clock import FakeClock
from opskit.guard import verify
from opskit.storage.journal import Journal
from tests.support.gitdaemon import git_daemon, silent_listener
from tests.support.gitsandbox import Sandbox, git, make_sandbox, rev


def said(stdout: str, outcome: str) -> bool:
    """The verdict line (after CMD's own passed-through output) starts with the outcome."""
    return any(line.startswith(f"{outcome}:") for line in stdout.splitlines())


def verdict(stdout: str) -> str:
    """The verdict line itself: outcome and reason, as the operator reads them."""
    outcomes = (verify.LANDED, verify.UP_TO_DATE, verify.UNCHANGED, verify.MISMATCH, verify.REJECTED,
                verify.BRANCH_MISSING, verify.UNREACHABLE)
    [line] = [ln for ln in stdout.splitlines() if ln.split(":")[0] in outcomes]
    return line


def events(state_dir: Path, prefix: str = "push.") -> list[dict]:  # type: ignore[type-arg]
    return [e.to_dict() for e in Journal(state_dir).query(type_prefix=prefix)]


# --- the seed incident and the wrapper outcomes --------------------------------------------

def test_nothing_pushed_is_unchanged_even_when_cmd_exits_0(sandbox: Sandbox, opskit, state_dir) -> None:
    local = sandbox.commit({"app.txt": "v2\n"}, "not pushed")
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--", "sh", "-c", "exit 0")
    assert r.returncode == 1, r.stdout + r.stderr
    assert verdict(r.stdout) == (f"unchanged: `sh -c exit 0` exited 0 but origin ({sandbox.bare}) master is "
                                 f"still at {sandbox.tip()[:12]}; {local[:12]} was not pushed")
    [ev] = events(state_dir)
    assert ev["type"] == "push.unverified"
    assert ev["data"]["outcome"] == "unchanged" and ev["data"]["cmd_exit"] == 0
    assert ev["data"]["expected"] == local and ev["data"]["after"] == ev["data"]["before"]


def test_already_up_to_date_is_unchanged_unless_allow_noop(sandbox: Sandbox, opskit) -> None:
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--", "true")
    at = f"origin ({sandbox.bare}) master was already at {sandbox.tip()[:12]} before the command; nothing new pushed"
    assert r.returncode == 1
    assert verdict(r.stdout) == f"unchanged: {at} (pass --allow-noop to accept an up-to-date remote)"
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--allow-noop", "--", "true")
    assert r.returncode == 0 and verdict(r.stdout) == f"up-to-date: {at}", r.stdout


def test_real_push_lands(sandbox: Sandbox, opskit, state_dir) -> None:
    before = sandbox.tip()
    new = sandbox.commit({"app.txt": "v2\n"}, "v2")
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--", "git", "push", "origin", "master")
    assert r.returncode == 0, r.stdout + r.stderr
    assert verdict(r.stdout) == f"landed: origin ({sandbox.bare}) master moved {before[:12]} → {new[:12]}"
    assert "master -> master" in r.stdout  # CMD's own output passed through
    assert sandbox.tip() == new
    [ev] = events(state_dir)
    assert ev["type"] == "push.verified" and ev["commit"] == new
    assert (ev["data"]["before"], ev["data"]["after"], ev["data"]["outcome"]) == (before, new, "landed")


def test_push_that_landed_is_landed_even_when_cmd_then_fails(sandbox: Sandbox, opskit, state_dir) -> None:
    # A wrapper script that pushes, then fails a later step (tagging, a notification): the
    # remote is the truth, so the push is proven and reported as landed, with CMD's exit named.
    before = sandbox.tip()
    new = sandbox.commit({"app.txt": "v2\n"}, "v2")
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--json", "--",
               "sh", "-c", "git push -q origin master && echo 'post-push step failed' && exit 4")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert (doc["outcome"], doc["before"], doc["after"], doc["cmd_exit"]) == ("landed", before, new, 4)
    assert any("exited 4 although the push landed" in n for n in doc["notes"]), doc
    assert sandbox.tip() == new
    [ev] = events(state_dir)
    assert ev["type"] == "push.verified" and ev["data"]["cmd_exit"] == 4


def test_push_to_wrong_branch_says_what_landed_where(sandbox: Sandbox, opskit) -> None:
    new = sandbox.commit({"app.txt": "v2\n"}, "v2")
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--", "git", "push", "origin", "HEAD:wrong")
    assert r.returncode == 1
    assert verdict(r.stdout) == (f"mismatch: {new[:12]} landed on wrong, not master; origin ({sandbox.bare}) "
                                 f"master is still at {sandbox.tip()[:12]}")


def test_remote_moved_to_another_commit_is_mismatch(sandbox: Sandbox, opskit) -> None:
    old = sandbox.tip()
    git(sandbox.dev, "checkout", "-q", "-b", "other")
    other = sandbox.commit({"other.txt": "x\n"}, "other work")
    git(sandbox.dev, "checkout", "-q", "master")
    mine = sandbox.commit({"app.txt": "v2\n"}, "mine")
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--", "git", "push", "origin", "other:master")
    assert r.returncode == 1
    assert verdict(r.stdout) == (f"mismatch: origin ({sandbox.bare}) master moved {old[:12]} → {other[:12]}, "
                                 f"expected {mine[:12]}")


def test_rejected_push_shows_exit_code_and_last_lines(sandbox: Sandbox, opskit, tmp_path: Path) -> None:
    # Someone else pushed first: ours is a non-fast-forward.
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(sandbox.bare), str(other))
    sandbox.commit({"app.txt": "theirs\n"}, "theirs", repo=other)
    git(other, "push", "-q", "origin", "master")
    sandbox.commit({"app.txt": "ours\n"}, "ours")
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--", "git", "push", "origin", "master")
    assert r.returncode == 1
    line = verdict(r.stdout)
    said_first = f"rejected: `git push origin master` exited 1; origin ({sandbox.bare}) master unchanged: "
    assert line.startswith(said_first), line
    # the reason ends with the last line the command printed (git's own words, which vary by version)
    printed = [ln for ln in r.stdout.splitlines()[:r.stdout.splitlines().index(line)] if ln.strip()]
    assert line[len(said_first):] == printed[-1].strip()[:200]
    assert "failed to push some refs" in r.stdout


def test_branch_missing(sandbox: Sandbox, opskit) -> None:
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--branch", "nosuch", "--", "true")
    assert r.returncode == 1
    assert verdict(r.stdout) == f"branch-missing: `true` exited 0 but origin ({sandbox.bare}) has no branch nosuch"


def test_json_keeps_stdout_clean(sandbox: Sandbox, opskit) -> None:
    before = sandbox.tip()
    new = sandbox.commit({"app.txt": "v2\n"}, "v2")
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--json", "--",
               "sh", "-c", "echo chatter; git push -q origin master")
    assert r.returncode == 0
    remote = f"origin ({sandbox.bare})"
    assert json.loads(r.stdout) == {  # the whole document: scripts read every key
        "outcome": "landed", "ok": True, "remote": remote, "branch": "master", "before": before,
        "after": new, "expected": new, "reason": f"{remote} master moved {before[:12]} → {new[:12]}",
        "cmd_exit": 0, "cmd_tail": ["chatter"], "moved": {}, "notes": [], "event_id": 1}
    assert "chatter" in r.stderr


# --- transports ---------------------------------------------------------------------------

def test_file_url_remote(sandbox: Sandbox, opskit) -> None:
    new = sandbox.commit({"app.txt": "v2\n"}, "v2")
    url = f"file://{sandbox.bare}"
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--remote", url, "--",
               "git", "push", url, "master")
    assert r.returncode == 0, r.stdout + r.stderr
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--remote", url, "--expect", new)
    assert r.returncode == 0 and said(r.stdout, "landed")


def test_git_daemon_wrapper_and_standalone(tmp_path: Path, opskit) -> None:
    sb = make_sandbox(tmp_path / "sb")
    with git_daemon(sb.bare.parent) as d:
        url = d.url(sb.bare.name)
        clone = tmp_path / "viagit"
        git(tmp_path, "clone", "-q", url, str(clone))
        new = sb.commit({"app.txt": "over git://\n"}, "daemon push", repo=clone)
        r = opskit("verify-push", "--repo", str(clone), "--", "git", "push", "origin", "master")
        assert r.returncode == 0, r.stdout + r.stderr
        assert said(r.stdout, "landed") and url in r.stdout
        assert rev(sb.bare, "refs/heads/master") == new
        r = opskit("verify-push", "--repo", str(clone), "--remote", url, "--expect", new)
        assert r.returncode == 0
        r = opskit("verify-push", "--repo", str(clone), "--remote", url, "--", "true")
        assert r.returncode == 1 and said(r.stdout, "unchanged")


@pytest.mark.parametrize("mode", ["standalone", "wrapper"])
def test_unresponsive_remote_is_bounded(sandbox: Sandbox, opskit, state_dir, mode: str) -> None:
    with silent_listener() as port:
        url = f"git://127.0.0.1:{port}/x"
        cmd = ["--", "sh", "-c", "echo ran > ran.txt"] if mode == "wrapper" else []
        r = opskit("verify-push", "--repo", str(sandbox.dev), "--remote", url, "--timeout", "1", *cmd)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "unreachable" in r.stdout and "no answer within 1s" in r.stdout
    assert not (sandbox.dev / "ran.txt").exists()  # without a "before" the push is not run
    [ev] = events(state_dir)
    assert ev["type"] == "push.unverified" and ev["data"]["outcome"] == "unreachable"


def test_credentials_never_shown(sandbox: Sandbox, opskit, state_dir) -> None:
    from opskit.standins import free_port

    port = free_port()  # nothing listens: connection refused
    for url in (f"http://alice:S3cretTok3n@127.0.0.1:{port}/x.git",
                f"http://TokenOnlyXYZ123@127.0.0.1:{port}/x.git"):
        git(sandbox.dev, "remote", "add", "tok", url)
        r = opskit("verify-push", "--repo", str(sandbox.dev), "--remote", "tok", "--",
                   "git", "push", "tok", "master")
        git(sandbox.dev, "remote", "remove", "tok")
        assert r.returncode == 1
        out = r.stdout + r.stderr + json.dumps(events(state_dir))
        assert "S3cretTok3n" not in out and "TokenOnlyXYZ123" not in out
        assert f"127.0.0.1:{port}" in r.stdout


# --- standalone: lagging remotes, --contains ------------------------------------------------

class PushOnSleep(FakeClock):
    """A remote that lags: the push arrives while verify-push is waiting."""

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__()
        self.sandbox = sandbox
        self.sleeps = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.sleeps == 3:
            self.sandbox.push("master")
        super().sleep(seconds)


def test_wait_polls_a_lagging_remote(sandbox: Sandbox, state_dir: Path) -> None:
    new = sandbox.commit({"app.txt": "v2\n"}, "v2")
    settings = config.load(None)
    j = Journal(state_dir)
    res = verify.verify_push(settings, j, repo_dir=sandbox.dev, expect=new, clock=FakeClock())
    assert res.outcome == "mismatch" and res.after != new

    clock = PushOnSleep(sandbox)
    res = verify.verify_push(settings, j, repo_dir=sandbox.dev, expect=new, wait=10, clock=clock)
    assert res.outcome == "landed" and res.after == new and clock.sleeps == 3

    clock2 = FakeClock()
    gone = "f" * 40
    res = verify.verify_push(settings, j, repo_dir=sandbox.dev, expect=gone, wait=5, clock=clock2)
    assert res.outcome == "mismatch" and "after waiting 5s" in res.reason
    assert clock2.monotonic() - 1000.0 == pytest.approx(5.0)


def test_contains_fetches_when_local_lacks_the_tip(sandbox: Sandbox, tmp_path: Path, opskit) -> None:
    base = sandbox.tip()
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(sandbox.bare), str(other))
    sandbox.commit({"later.txt": "x\n"}, "later", repo=other)
    git(other, "push", "-q", "origin", "master")
    # dev has never seen the new tip: --contains must fetch it to prove ancestry.
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--expect", base)
    assert r.returncode == 1 and "mismatch" in r.stdout
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--expect", base, "--contains")
    assert r.returncode == 0, r.stdout + r.stderr
    assert git(sandbox.dev, "for-each-ref", "refs/opskit/").stdout == ""  # temp ref cleaned up
    unrelated = sandbox.commit({"side.txt": "y\n"}, "never pushed")
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--expect", unrelated, "--contains")
    assert r.returncode == 1 and "in its history" in r.stdout


# --- bad arguments: exit 2, one line ------------------------------------------------------

def test_bad_arguments_exit_2(sandbox: Sandbox, opskit, tmp_path: Path) -> None:
    cases = [
        (["--repo", str(tmp_path)], "not a git repository"),
        (["--repo", str(sandbox.dev), "--remote", "nosuch"], "no such remote"),
        (["--repo", str(sandbox.dev), "--expect", "nosuchrev"], "not a commit"),
        (["--repo", str(sandbox.dev), "--remote", f"file://{tmp_path}/missing.git"], "no such path"),
        (["--repo", str(sandbox.dev), "--branch", "bad..name"], "not a valid branch name"),
    ]
    for args, msg in cases:
        r = opskit("verify-push", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    git(sandbox.dev, "checkout", "-q", "--detach")
    r = opskit("verify-push", "--repo", str(sandbox.dev))
    assert r.returncode == 2 and "--branch" in r.stderr


def test_unverified_push_is_notified(sandbox: Sandbox, opskit, write_config, tmp_path: Path) -> None:
    got = tmp_path / "got.txt"
    conf = write_config(f'[opskit]\nnotify = ["t"]\n[notify.t]\ntype = "command"\n'
                        f'command = "cat >> {got}"\n')
    sandbox.commit({"app.txt": "v2\n"}, "v2")
    r = opskit("--config", str(conf), "verify-push", "--repo", str(sandbox.dev), "--", "true")
    assert r.returncode == 1
    assert "unchanged" in got.read_text()
    got.unlink()
    r = opskit("--config", str(conf), "verify-push", "--repo", str(sandbox.dev), "--",
               "git", "push", "origin", "master")
    assert r.returncode == 0 and not got.exists()  # landed: nothing to shout about


def test_missing_command_is_rejected_and_journaled(sandbox: Sandbox, opskit, state_dir) -> None:
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--", "no-such-push-tool", "x")
    assert r.returncode == 1 and said(r.stdout, "rejected") and "exited 127" in r.stdout
    [ev] = events(state_dir)
    assert ev["data"]["outcome"] == "rejected" and ev["data"]["cmd_exit"] == 127


@pytest.mark.parametrize("case", ["at-it", "in-history", "contains-at-it", "mismatch-after-wait",
                                  "mismatch-in-history", "branch-missing", "unreachable"])
def test_check_only_mode_says_exactly_what_the_remote_holds(case: str, sandbox: Sandbox, opskit,
                                                            tmp_path: Path) -> None:
    """`verify-push --expect SHA` with no CMD: the whole --json document of each outcome."""
    remote = f"origin ({sandbox.bare})"
    base = sandbox.tip()
    args = ["verify-push", "--repo", str(sandbox.dev), "--json"]
    if case in ("in-history", "contains-at-it"):
        new = sandbox.commit({"app.txt": "v2\n"}, "v2")
        git(sandbox.dev, "push", "-q", "origin", "master")
        expected, tip = (base if case == "in-history" else new), new
        args += ["--expect", expected, "--contains"]
        how = "has it in its history" if case == "in-history" else "is at it"
        want = ("landed", tip, tip, f"{remote} master {how}: {tip[:12]}")
    elif case.startswith("mismatch"):
        expected = sandbox.commit({"app.txt": "not pushed\n"}, "local only")
        args += ["--expect", expected]
        if case == "mismatch-after-wait":
            args += ["--wait", "0.3"]
            want = ("mismatch", base, base, f"{remote} master is at {base[:12]}, expected {expected[:12]} "
                    "after waiting 0.3s")
        else:
            args += ["--contains"]
            want = ("mismatch", base, base, f"{remote} master is at {base[:12]}, expected {expected[:12]} "
                    "in its history")
    elif case == "branch-missing":
        expected = base
        args += ["--expect", base, "--branch", "nosuch"]
        want = ("branch-missing", None, None, f"{remote} has no branch nosuch")
    elif case == "unreachable":
        expected = base
        gone = tmp_path / "gone.git"  # a folder that was a bare repo: the disk under it was replaced
        gone.mkdir()
        args += ["--expect", base, "--remote", str(gone)]
        remote = str(gone)
        want = ("unreachable", None, None, f"cannot read {gone}: ")
    else:
        expected = base
        args += ["--expect", base]
        want = ("landed", base, base, f"{remote} master is at it: {base[:12]}")
    r = opskit(*args)
    assert r.returncode == (0 if want[0] == "landed" else 1), r.stdout + r.stderr
    doc = json.loads(r.stdout)
    outcome, before, after, reason = want
    if case == "unreachable":
        assert doc["reason"].startswith(reason) and len(doc["reason"]) > len(reason), doc["reason"]
        reason = doc["reason"]
    assert doc == {"outcome": outcome, "ok": outcome == "landed", "remote": remote,
                   "branch": "nosuch" if case == "branch-missing" else "master", "before": before,
                   "after": after, "expected": expected, "reason": reason, "cmd_exit": None, "cmd_tail": [],
                   "moved": {}, "notes": [], "event_id": 1}


def test_cmd_that_deletes_the_branch_and_pushes_elsewhere(sandbox: Sandbox, opskit) -> None:
    git(sandbox.dev, "push", "-q", "origin", "master:release")
    before = sandbox.tip("release")
    new = sandbox.commit({"app.txt": "v2\n"}, "v2")
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--branch", "release", "--", "sh", "-c",
               "git push -q origin :release && git push -q origin HEAD:hotfix")
    assert r.returncode == 1, r.stdout + r.stderr
    assert verdict(r.stdout) == (
        f"branch-missing: `sh -c git push -q origin :release && git push -q origin HEAD:hotfix` exited 0 but "
        f"origin ({sandbox.bare}) has no branch release (it was at {before[:12]} before: deleted); "
        f"{new[:12]} landed on hotfix")


def test_remote_gone_after_cmd_is_unreachable_not_landed(sandbox: Sandbox, opskit, tmp_path: Path) -> None:
    sandbox.commit({"app.txt": "v2\n"}, "v2")
    gone = tmp_path / "moved.git"
    r = opskit("verify-push", "--repo", str(sandbox.dev), "--json", "--", "sh", "-c",
               f"git push -q origin master && mv {sandbox.bare} {gone}")
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert (doc["outcome"], doc["ok"], doc["after"]) == ("unreachable", False, None)
    # the command is shown cut to a line's width; git's own last words follow
    assert re.fullmatch(r"`sh -c git push -q origin master && mv .+` exited 0, then "
                        + re.escape(f"origin ({sandbox.bare}) could not be read: git ls-remote origin: ") + ".+",
                        doc["reason"]), doc["reason"]
