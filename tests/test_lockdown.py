"""Lockdown policies: pure checks, then real pushes and commits through installed hooks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opskit import hookmain
from opskit.base import config
from opskit.guard.lockdown import ZERO, check_commit, check_ref_update
from tests.support.gitsandbox import git, rev
from tests.support.hooks import Hooked, hooked_service

A, B, C = "a" * 40, "b" * 40, "c" * 40


class Facts:
    def __init__(self, *, ff: bool = True, frozen: dict[str, Any] | None = None,
                 quarantined: dict[str, dict[str, Any]] | None = None) -> None:
        self.ff, self._frozen, self.q = ff, frozen, quarantined or {}
        self.asked: list[str] = []

    def is_ancestor(self, old: str, new: str) -> bool:
        self.asked.append("ancestor")
        return self.ff

    def tree(self, sha: str) -> str | None:
        return "t" + sha[1:]

    def frozen(self) -> dict[str, Any] | None:
        return self._frozen

    def quarantined(self, tree: str) -> dict[str, Any] | None:
        return self.q.get(tree)


def svc(**kw: Any) -> config.ServiceSettings:
    return config.ServiceSettings(name="web", repo="/srv/git/web.git", worktree=Path("/srv/web"), **kw)


@pytest.mark.parametrize("kw, ref, old, new, facts, rule", [
    ({"direct_push": True}, "refs/heads/master", A, ZERO, Facts(), "delete"),
    ({"direct_push": True}, "refs/heads/master", A, B, Facts(ff=False), "non-fast-forward"),
    ({"direct_push": True}, "refs/heads/master", A, B, Facts(frozen={"reason": "r", "event_id": 9}), "frozen"),
    ({}, "refs/heads/master", A, B, Facts(), "direct-push"),
    ({}, "refs/heads/master", ZERO, B, Facts(), "direct-push"),
    ({"direct_push": True}, "refs/heads/master", A, B, Facts(), "accept"),
    ({"direct_push": True}, "refs/heads/master", ZERO, B, Facts(ff=False), "accept"),
    ({}, "refs/heads/feature/x", A, B, Facts(ff=False), "feature-branch"),
    ({}, "refs/heads/feature/x", A, ZERO, Facts(), "feature-branch"),
    ({}, "refs/heads/feature/x", A, B, Facts(quarantined={"t" + B[1:]: {"event_id": 7}}), "quarantine"),
    ({}, "refs/tags/v1", ZERO, B, Facts(quarantined={"t" + B[1:]: {"event_id": 7}}), "quarantine"),
    ({}, "refs/heads/other", A, B, Facts(ff=False), "accept"),
    ({"feature_branches": ("ft-*",)}, "refs/heads/feature/x", A, B, Facts(), "accept"),
])
def test_check_ref_update_rules(kw: dict[str, Any], ref: str, old: str, new: str, facts: Facts,
                                rule: str) -> None:
    d = check_ref_update(svc(**kw), ref, old, new, facts)
    assert d.rule == rule
    assert d.allowed == (rule in ("accept", "feature-branch"))
    assert bool(d.lines) != d.allowed and all("\n" not in ln for ln in d.lines)


def test_refusal_messages_say_what_to_do() -> None:
    d = check_ref_update(svc(), "refs/heads/master", A, B, Facts())
    assert "git push <remote> HEAD:feature/my-change" in "\n".join(d.lines)
    d = check_ref_update(svc(), "refs/heads/feature/x", A, B,
                         Facts(quarantined={"t" + B[1:]: {"event_id": 42, "reason": "health failed"}}))
    text = "\n".join(d.lines)
    assert "#42" in text and f"opskit quarantine release web t{B[1:]}" in text
    d = check_ref_update(svc(direct_push=True), "refs/heads/master", A, B,
                         Facts(frozen={"reason": "revert failed", "event_id": 3, "since": "now"}))
    assert "opskit unfreeze web" in "\n".join(d.lines) and "#3" in d.lines[0]


def test_deletion_does_not_walk_history() -> None:
    f = Facts()
    check_ref_update(svc(), "refs/heads/feature/x", A, ZERO, f)
    check_ref_update(svc(), "refs/heads/master", A, ZERO, f)
    assert f.asked == []


def test_check_commit_break_glass() -> None:
    refused = check_commit("pre-commit", "web", {})
    assert not refused.allowed and "feature branch" in " ".join(refused.lines)
    assert "OPSKIT_BREAK_GLASS" in " ".join(refused.lines)
    empty = check_commit("pre-merge-commit", "web", {"OPSKIT_BREAK_GLASS": "  "})
    assert not empty.allowed and "merge commits" in empty.lines[0] and "empty" in empty.lines[-1]
    ok = check_commit("pre-commit", "web", {"OPSKIT_BREAK_GLASS": "db down, hotfix"})
    assert ok.allowed and ok.reason == "db down, hotfix"


# --- real pushes through the installed pre-receive ---------------------------------------

def blocked(h: Hooked) -> list[dict[str, Any]]:
    return [e.data for e in h.events("lockdown.blocked")]


def test_direct_push_refused_when_direct_push_is_off(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir)
    before = h.sb.tip()
    new = h.sb.commit({"app.txt": "v2\n"}, "v2")
    r = h.sb.push("master", check=False)
    assert r.returncode != 0
    assert "remote: opskit: refused: direct pushes to refs/heads/master are off" in r.stderr
    assert h.sb.tip() == before
    assert blocked(h) == [{"ref": "refs/heads/master", "old": before, "new": new, "rule": "direct-push",
                           "reason": "direct pushes to 'master' are off", "hook": "pre-receive"}]
    # The same commit on a feature branch is accepted (the pipeline's chain takes it from there).
    r = h.sb.push("HEAD:refs/heads/feature/v2")
    assert h.sb.tip("feature/v2") == new


def test_force_push_and_deletion_refused(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir, extra="direct_push = true\n")
    first = h.sb.tip()
    second = h.sb.commit({"app.txt": "v2\n"}, "v2")
    h.sb.push("master")
    assert h.sb.tip() == second
    git(h.sb.dev, "reset", "-q", "--hard", first)
    rewritten = h.sb.commit({"app.txt": "rewritten\n"}, "rewrite history")
    r = h.sb.push("--force", "master", check=False)
    assert r.returncode != 0 and "non-fast-forward" in r.stderr
    assert h.sb.tip() == second
    r = h.sb.push(":master", check=False)
    assert r.returncode != 0 and "cannot be deleted" in r.stderr
    assert h.sb.tip() == second
    rules = [(d["rule"], d["new"]) for d in blocked(h)]
    assert rules == [("non-fast-forward", rewritten), ("delete", ZERO)]


def test_other_branches_can_be_rebased_and_deleted(tmp_path: Path, state_dir: Path) -> None:
    # Only the deploy branch is protected: a repo-wide receive.denyNonFastForwards or
    # denyDeletes would stop developers from rebasing or deleting their own branches.
    h = hooked_service(tmp_path, state_dir)
    git(h.sb.dev, "checkout", "-q", "-b", "topic/x")
    h.sb.commit({"t.txt": "1\n"}, "topic 1")
    h.sb.push("topic/x")
    git(h.sb.dev, "commit", "-q", "--amend", "-m", "topic 1, reworded")
    r = h.sb.push("--force", "topic/x", check=False)
    assert r.returncode == 0, r.stderr
    assert rev(h.sb.bare, "refs/heads/topic/x") == rev(h.sb.dev)
    r = h.sb.push(":topic/x", check=False)
    assert r.returncode == 0, r.stderr
    assert git(h.sb.bare, "rev-parse", "--verify", "-q", "refs/heads/topic/x", check=False).returncode != 0


def test_frozen_service_refuses_pushes_until_unfrozen(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir, extra="direct_push = true\n")
    h.journal().kv_set("frozen", "svc", {"reason": "revert redeploy failed", "event_id": 12,
                                         "since": "2026-04-26T04:00:00Z"})
    before = h.sb.tip()
    new = h.sb.commit({"app.txt": "v2\n"}, "v2")
    r = h.sb.push("master", check=False)
    assert r.returncode != 0 and "is frozen" in r.stderr and "opskit unfreeze svc" in r.stderr
    assert h.sb.tip() == before and blocked(h)[-1]["rule"] == "frozen"
    h.journal().kv_delete("frozen", "svc")
    h.sb.push("master")
    assert h.sb.tip() == new


def test_quarantined_tree_refused_until_released(tmp_path: Path, state_dir: Path, opskit) -> None:
    h = hooked_service(tmp_path, state_dir)
    bad = h.sb.commit({"app.txt": "broken\n"}, "bad")
    tree = git(h.sb.dev, "rev-parse", "HEAD^{tree}").stdout.strip()
    j = h.journal()
    ev = j.append("rollback.complete", "svc", {"reverted": bad, "reason": "Connection refused"})
    j.quarantine_add("svc", tree, bad, ev.id, "Connection refused")
    # The same tree again, under another commit id and a branch name, is still refused.
    git(h.sb.dev, "commit", "-q", "--amend", "-m", "same tree, new id")
    again = rev(h.sb.dev)
    assert again != bad
    r = h.sb.push("HEAD:refs/heads/feature/retry", check=False)
    assert r.returncode != 0
    assert f"rollback event #{ev.id}" in r.stderr
    assert f"opskit quarantine release svc {tree}" in r.stderr
    assert blocked(h)[-1]["rule"] == "quarantine"
    listed = opskit("--config", str(h.config), "quarantine", "list", "svc", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout.splitlines()[0])["tree"] == tree
    nothing = opskit("--config", str(h.config), "quarantine", "release", "svc", "deadbeef")
    assert nothing.returncode == 1
    bad_arg = opskit("--config", str(h.config), "quarantine", "release", "svc", "not-hex")
    assert bad_arg.returncode == 2
    # The refused commit never reached the repo (git drops a refused push's objects), so
    # release goes by the tree the message names; a prefix is enough.
    rel = opskit("--config", str(h.config), "quarantine", "release", "svc", tree[:10])
    assert rel.returncode == 0, rel.stderr
    assert h.events("quarantine.released")[-1].data["tree"] == tree
    h.sb.push("HEAD:refs/heads/feature/retry")
    assert h.sb.tip("feature/retry") == again


# --- the deployed worktree ----------------------------------------------------------------

def stage(h: Hooked, name: str = "hotfix.txt") -> str:
    (h.sb.worktree / name).write_text("fix\n")
    git(h.sb.worktree, "add", "--", name)
    return rev(h.sb.worktree)


def test_worktree_commits_refused_on_branch_and_detached_head(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir)
    head = stage(h)
    r = git(h.sb.worktree, "commit", "-m", "hotfix", check=False)
    assert r.returncode != 0 and "refused: commits are not allowed" in r.stderr
    assert "push a feature branch" in r.stderr
    assert rev(h.sb.worktree) == head
    git(h.sb.worktree, "checkout", "-q", "--detach")
    r = git(h.sb.worktree, "commit", "-m", "hotfix on detached head", check=False)
    assert r.returncode != 0 and rev(h.sb.worktree) == head
    found = h.wait_events("lockdown.blocked", 2)
    assert [e.data["rule"] for e in found] == ["worktree-commit"] * 2
    assert {e.data["ref"] for e in found} == {"refs/heads/master", "HEAD (detached)"}
    # --no-verify is not stopped here; drift-scan reports the bypass commit.
    git(h.sb.worktree, "commit", "-q", "--no-verify", "-m", "bypass")
    assert rev(h.sb.worktree) != head


def test_worktree_merge_commit_refused(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir)
    git(h.sb.worktree, "checkout", "-q", "-b", "side")
    git(h.sb.worktree, "commit", "-q", "--no-verify", "--allow-empty", "-m", "side")
    git(h.sb.worktree, "checkout", "-q", "master")
    head = rev(h.sb.worktree)
    r = git(h.sb.worktree, "merge", "--no-ff", "--no-edit", "side", check=False)
    assert r.returncode != 0 and "merge commits are not allowed" in r.stderr
    assert rev(h.sb.worktree) == head


def test_break_glass_commits_journals_and_notifies(tmp_path: Path, state_dir: Path) -> None:
    inbox = tmp_path / "inbox.txt"
    h = hooked_service(tmp_path, state_dir, extra=(
        'notify = ["ops"]\n[notify.ops]\ntype = "command"\n'
        f'command = "cat >> \'{inbox}\'"\n'))
    head = stage(h)
    reason = "db down $(touch PWNED) `id` 'q' \"dq\""
    r = git(h.sb.worktree, "commit", "-m", "msg $(touch PWNED2) \"x\" 'y'", check=False,
            env={"OPSKIT_BREAK_GLASS": reason, "USER": "alice"})
    assert r.returncode == 0, r.stderr
    assert rev(h.sb.worktree) != head and "BREAK GLASS by alice" in r.stderr
    (ev,) = h.events("lockdown.breakglass")
    assert ev.data["reason"] == reason and ev.data["user"] == "alice"
    assert ev.data["hook"] == "pre-commit" and ev.data["ref"] == "refs/heads/master"
    assert git(h.sb.worktree, "log", "-1", "--format=%s").stdout.strip() == "msg $(touch PWNED2) \"x\" 'y'"
    assert not list(tmp_path.rglob("PWNED*"))
    assert "Break glass in the deployed worktree of svc by alice" in inbox.read_text()
    assert reason in inbox.read_text()


# --- hostile names ------------------------------------------------------------------------

def push_bytes(h: Hooked, refspec: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([b"git", b"push", b"origin", refspec], check=False, cwd=h.sb.dev, capture_output=True,
                          env=os.environ.copy())


def test_hostile_branch_names_are_never_interpreted(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir)
    new = h.sb.commit({"f.txt": "f\n"}, "it's a \"test\" $(touch PWNED)")
    # git allows quotes, $, () and backticks in ref names (not spaces).
    hostile = "feature/it's$(touch${IFS}PWNED)`touch${IFS}PWNED`\"q\";rm${IFS}-rf${IFS}x"
    r = push_bytes(h, b"HEAD:refs/heads/" + hostile.encode())
    assert r.returncode == 0, r.stderr
    assert h.sb.tip(hostile) == new
    # Non-UTF-8 bytes in a ref name: refused by quarantine, journaled readably.
    tree = git(h.sb.dev, "rev-parse", "HEAD^{tree}").stdout.strip()
    h.journal().quarantine_add("svc", tree, new, 5, "bad")
    r = push_bytes(h, b"HEAD:refs/heads/feature/\xff\xfe$(touch${IFS}PWNED)")
    assert r.returncode != 0 and b"rollback event #5" in r.stderr
    ref = blocked(h)[-1]["ref"]
    assert ref.startswith("refs/heads/feature/") and "\ufffd" in ref
    assert not list(tmp_path.rglob("PWNED*"))


@pytest.mark.parametrize("breakage", ["config", "journal"])
def test_pre_receive_fails_closed_when_it_cannot_check(tmp_path: Path, state_dir: Path, breakage: str) -> None:
    # A protection that cannot be evaluated refuses: a broken config or journal must not turn
    # the deploy branch into one anybody can force-push or delete.
    h = hooked_service(tmp_path, state_dir, extra="direct_push = true\n")
    before = h.sb.tip()
    if breakage == "config":
        h.config.write_text(h.config.read_text() + "[service.svc\n")  # invalid TOML
    else:
        for f in state_dir.glob("journal.db*"):
            f.unlink()
        (state_dir / "journal.db").mkdir()  # sqlite cannot open it
    h.sb.commit({"app.txt": "v2\n"}, "v2")
    r = h.sb.push("master", check=False)
    assert r.returncode != 0
    assert "remote: opskit: refused: the push could not be checked (" in r.stderr, r.stderr
    assert "opskit hooks uninstall svc" in r.stderr
    assert h.sb.tip() == before


# --- post-receive -------------------------------------------------------------------------

def test_post_receive_runs_the_pipeline(tmp_path: Path, state_dir: Path) -> None:
    h = hooked_service(tmp_path, state_dir, extra="direct_push = true\n")
    new = h.sb.commit({"app.txt": "v2\n"}, "v2")
    r = h.sb.push("master")
    assert "remote: " in r.stderr
    (ev,) = h.events("push.received")
    assert ev.data["ref"] == "refs/heads/master" and ev.data["new"] == new


def test_post_receive_survives_a_broken_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    import opskit.chain.routing

    def explode(*a: object, **k: object) -> int:
        raise RuntimeError("boom https://discord.com/api/webhooks/1/SECRETTOKEN")

    monkeypatch.setattr(opskit.chain.routing, "on_post_receive", explode)
    args = hookmain.parse(["post-receive", "--config", str(tmp_path / "c.toml"), "--service", "svc"])
    assert hookmain.post_receive(args, f"{A} {B} refs/heads/master\n".encode()) == 0
    out = capsysbinary.readouterr().out.decode()
    assert "the push landed but the pipeline failed" in out and "boom" in out
    assert "SECRETTOKEN" not in out and len(out.strip().splitlines()) == 1


def test_ref_name_with_unicode_line_separator_is_not_the_deploy_branch(tmp_path: Path, state_dir: Path) -> None:
    # Git allows U+2028 in ref names; str.splitlines() would read `refs/heads/master\u2028x` as
    # a *new* `refs/heads/master` and deploy unrelated history past the force-push rule.
    from opskit.git.repo import read_hook_lines

    weird = "refs/heads/master\u2028x"
    assert list(read_hook_lines(f"{'0' * 40} {'a' * 40} {weird}\n")) == [("0" * 40, "a" * 40, weird)]

    h = hooked_service(tmp_path, state_dir, extra="direct_push = true\n")
    deployed = rev(h.sb.worktree)
    git(h.sb.dev, "checkout", "-q", "--orphan", "evil")
    git(h.sb.dev, "rm", "-q", "-rf", ".")
    h.sb.commit({"evil.txt": "unrelated history\n"}, "evil")
    r = git(h.sb.dev, "push", "origin", "HEAD:" + weird, check=False)
    assert r.returncode == 0, r.stderr  # an ordinary other branch: accepted, never deployed
    assert rev(h.sb.worktree) == deployed
    assert h.sb.tip() != rev(h.sb.dev)
