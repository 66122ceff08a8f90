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
from opskit.guard.lockdown import ZERO, Decision, check_commit, check_ref_update
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
    # frozen: a feature branch would merge and deploy; its deletion, a tag or another branch would not
    ({}, "refs/heads/feature/x", A, B, Facts(frozen={"reason": "r", "event_id": 9}), "frozen"),
    ({}, "refs/heads/feature/x", ZERO, B, Facts(frozen={}), "frozen"),
    ({}, "refs/heads/feature/x", A, ZERO, Facts(frozen={"reason": "r"}), "feature-branch"),
    ({}, "refs/heads/other", A, B, Facts(frozen={"reason": "r"}), "accept"),
    ({}, "refs/tags/v1", ZERO, B, Facts(frozen={"reason": "r"}), "accept"),
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


CAFE = os.fsdecode(b"refs/heads/caf\xe9")  # git allows non-UTF-8 bytes in a ref name
T_C = "t" + C[1:]  # Facts.tree(C)


@pytest.mark.parametrize("kw, ref, old, new, facts, want", [
    ({"direct_push": True}, "refs/heads/master", A, ZERO, Facts(), (
        "delete", "deleting the deploy branch 'master' is not allowed",
        ("opskit: refused: refs/heads/master is the deploy branch of 'web'; it cannot be deleted.",))),
    ({"direct_push": True}, "refs/heads/master", A, B, Facts(ff=False), (
        "non-fast-forward", "aaaaaaaaaaaa is not an ancestor of bbbbbbbbbbbb (force push)",
        ("opskit: refused: non-fast-forward update of refs/heads/master (aaaaaaaaaaaa → bbbbbbbbbbbb).",
         "  History is never rewritten here: revert the commit instead of force-pushing."))),
    ({"direct_push": True}, "refs/heads/master", A, B,
     Facts(frozen={"reason": "revert failed", "event_id": 3, "since": "2026-04-26T04:00:00Z"}), (
        "frozen", "service is frozen: revert failed",
        ("opskit: refused: service 'web' is frozen since 2026-04-26T04:00:00Z (event #3): revert failed",
         "  A human must fix it first, then: opskit unfreeze web"))),
    ({"direct_push": True}, "refs/heads/master", A, B, Facts(frozen={}), (
        "frozen", "service is frozen: a rollback failed",
        ("opskit: refused: service 'web' is frozen: a rollback failed",
         "  A human must fix it first, then: opskit unfreeze web"))),
    ({}, "refs/heads/feature/x", A, B,
     Facts(frozen={"reason": "revert failed", "event_id": 3, "since": "2026-04-26T04:00:00Z"}), (
        "frozen", "service is frozen: revert failed",
        ("opskit: refused: service 'web' is frozen since 2026-04-26T04:00:00Z by opskit after its "
         "automatic rollback failed (event #3): revert failed",
         "  refs/heads/feature/x would be tested, merged and deployed, so it was not taken (nothing tested, "
         "nothing merged). A human must fix it first, then: opskit unfreeze web — and push it again."))),
    ({}, "refs/heads/feature/x", ZERO, B,
     Facts(frozen={"reason": "frozen by ana: db migration", "event_id": None, "since": "2026-04-26T04:00:00Z"}), (
        "frozen", "service is frozen: frozen by ana: db migration",
        ("opskit: refused: service 'web' is frozen since 2026-04-26T04:00:00Z: frozen by ana: db migration",
         "  refs/heads/feature/x would be tested, merged and deployed, so it was not taken (nothing tested, "
         "nothing merged). A human must fix it first, then: opskit unfreeze web — and push it again."))),
    ({"feature_branches": ("agent/**/wip-?",)}, "refs/heads/master", A, B, Facts(), (
        "direct-push", "direct pushes to 'master' are off",
        ("opskit: refused: direct pushes to refs/heads/master are off for 'web' (direct_push = false).",
         "  Push a feature branch instead (it is tested, merged and deployed): "
         "git push <remote> HEAD:agent/my-change/wip-x"))),
    ({"feature_branches": ()}, "refs/heads/master", A, B, Facts(), (
        "direct-push", "direct pushes to 'master' are off",
        ("opskit: refused: direct pushes to refs/heads/master are off for 'web' (direct_push = false).",
         "  Direct pushes are off and no feature_branches are configured; ask an operator."))),
    ({}, CAFE, ZERO, C, Facts(quarantined={T_C: {"event_id": 42, "reason": "health failed"}}), (
        "quarantine", f"tree {T_C} was auto-reverted (event 42): health failed",
        ("opskit: refused: cccccccccccc on refs/heads/caf\ufffd has the tree of a commit that was "
         "auto-reverted (rollback event #42: health failed).",
         f"  Once it is really fixed: opskit quarantine release web {T_C}"))),
    ({}, "refs/tags/v1", ZERO, C, Facts(quarantined={T_C: {"event_id": 7}}), (
        "quarantine", f"tree {T_C} was auto-reverted (event 7): its deploy failed",
        ("opskit: refused: cccccccccccc on refs/tags/v1 has the tree of a commit that was "
         "auto-reverted (rollback event #7: its deploy failed).",
         f"  Once it is really fixed: opskit quarantine release web {T_C}"))),
])
def test_every_refusal_says_exactly_what_and_what_to_do(kw: dict[str, Any], ref: str, old: str, new: str,
                                                        facts: Facts, want: tuple[str, str, tuple[str, ...]]) -> None:
    # The pusher reads these lines and the journal keeps the reason: both are the contract.
    d = check_ref_update(svc(**kw), ref, old, new, facts)
    assert (d.allowed, d.rule, d.reason, d.lines) == (False, *want)
    assert d == Decision(False, want[0], want[1]) and d != Decision(False, want[0], "other")
    assert d != Decision(True, want[0], want[1]) and d != Decision(False, "accept", want[1])
    assert d != (False, want[0], want[1])  # not equal to a plain tuple


@pytest.mark.parametrize("hook, what", [("pre-commit", "commits"), ("pre-merge-commit", "merge commits")])
def test_worktree_refusal_says_exactly_what_and_what_to_do(hook: str, what: str) -> None:
    d = check_commit(hook, "web", {})
    assert (d.allowed, d.rule, d.reason) == (False, "worktree-commit", f"{what} in the deployed worktree")
    assert d.lines == (
        f"opskit: refused: {what} are not allowed in the deployed worktree of 'web'.",
        "  Ship through the pipeline: commit in your own clone and push a feature branch to the "
        "canonical repo (e.g. git push origin HEAD:feature/my-change).",
        '  Emergency only: OPSKIT_BREAK_GLASS="why" git commit …  (journaled and notified)')
    ok = check_commit(hook, "web", {"OPSKIT_BREAK_GLASS": " db down "})
    assert (ok.allowed, ok.rule, ok.reason, ok.lines) == (True, "break-glass", "db down", ())
    accepted = check_ref_update(svc(), "refs/heads/other", A, B, Facts())
    assert (accepted.allowed, accepted.rule, accepted.reason, accepted.lines) == (True, "accept", "", ())


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
    # a tag (annotated: the hook sees the tag object, and peels it to the commit's tree) too
    git(h.sb.dev, "tag", "-a", "-m", "release it anyway", "v1-retry")
    r = h.sb.push("refs/tags/v1-retry", check=False)
    assert r.returncode != 0 and "on refs/tags/v1-retry has the tree of a commit that was auto-reverted" in r.stderr
    assert (blocked(h)[-1]["ref"], blocked(h)[-1]["rule"]) == ("refs/tags/v1-retry", "quarantine")
    assert git(h.sb.bare, "rev-parse", "-q", "--verify", "refs/tags/v1-retry", check=False).returncode != 0
    listed = opskit("--config", str(h.config), "quarantine", "list", "svc", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout.splitlines()[0])["tree"] == tree
    nothing = opskit("--config", str(h.config), "quarantine", "release", "svc", "deadbeef")
    assert nothing.returncode == 1
    bad_arg = opskit("--config", str(h.config), "quarantine", "release", "svc", "not-hex")
    assert bad_arg.returncode == 2
    # The refused commit never reached the repo (git drops a refused push's objects), so
    # release goes by the tree the message names; a prefix is enough.
    rel = opskit("--config", str(h.config), "quarantine", "release", "svc", tree[:10], "--json")
    assert rel.returncode == 0, rel.stderr
    doc = json.loads(rel.stdout)  # one JSON object, nothing else on stdout
    assert doc["service"] == "svc" and [r["tree"] for r in doc["released"]] == [tree]
    assert doc["released"][0]["sha"] == bad
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
    # break glass works for a merge too, and says which hook let it through
    git(h.sb.worktree, "merge", "--abort")  # the refused merge is left half done, as git leaves it
    r = git(h.sb.worktree, "merge", "--no-ff", "--no-edit", "side", check=False,
            env={"OPSKIT_BREAK_GLASS": "hotfix merge during the outage", "USER": "alice"})
    assert r.returncode == 0, r.stderr
    assert "BREAK GLASS by alice" in r.stderr and rev(h.sb.worktree, "HEAD^1") == head
    (ev,) = h.events("lockdown.breakglass")
    assert (ev.data["hook"], ev.data["reason"], ev.data["user"], ev.data["ref"]) == (
        "pre-merge-commit", "hotfix merge during the outage", "alice", "refs/heads/master")


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


def test_git_facts_and_pre_receive_in_process(tmp_path: Path, state_dir: Path) -> None:
    # What the installed hook runs, called directly: the facts come from a real bare repo and
    # the journal, and every refused ref is journaled and printed; any refusal refuses all.
    from opskit.git.repo import Git
    from opskit.guard import lockdown

    h = hooked_service(tmp_path, state_dir, extra="direct_push = true\n", install=False)
    first = h.sb.tip()
    second = h.sb.commit({"app.txt": "v2\n"}, "v2")
    h.sb.push("master")
    j = h.journal()
    facts = lockdown.GitFacts(Git(h.sb.bare), j, "svc")
    assert facts.is_ancestor(first, second) and not facts.is_ancestor(second, first)
    assert facts.is_ancestor("f" * 40, second) is False  # an object git cannot walk: not provably an ancestor
    assert facts.tree(second) == rev(h.sb.bare, f"{second}^{{tree}}")
    blob = rev(h.sb.bare, f"{second}:app.txt")
    assert facts.tree(blob) is None and facts.frozen() is None
    j.quarantine_add("svc", rev(h.sb.bare, f"{first}^{{tree}}"), first, 5, "HTTP 503")
    q = facts.quarantined(rev(h.sb.bare, f"{first}^{{tree}}"))
    assert q is not None and q["event_id"] == 5 and q["sha"] == first
    assert facts.quarantined(rev(h.sb.bare, f"{second}^{{tree}}")) is None
    j.kv_set("frozen", "svc", {"reason": "r"})
    assert lockdown.GitFacts(Git(h.sb.bare), j, "svc").frozen() == {"reason": "r"}
    assert facts.frozen() is None  # read once per push: one answer for every ref of it
    j.kv_delete("frozen", "svc")

    out: list[str] = []
    svc_ = h.settings().service("svc")
    ok = [(first, second, "refs/heads/master"), (ZERO, second, "refs/heads/topic")]
    assert lockdown.pre_receive(svc_, ok, facts, j, out.append) == 0 and out == []
    assert h.events("lockdown.blocked") == []
    mixed = [(ZERO, second, "refs/heads/ok-first"), (second, first, "refs/heads/master")]
    assert lockdown.pre_receive(svc_, mixed, facts, j, out.append) == 1  # an allowed ref first does not end the check
    assert [e.data["ref"] for e in h.events("lockdown.blocked")] == ["refs/heads/master"]
    out.clear()
    bad = [(second, first, "refs/heads/master"), (ZERO, first, "refs/tags/v0"), (ZERO, second, "refs/heads/x")]
    assert lockdown.pre_receive(svc_, bad, facts, j, out.append) == 1
    assert out[0].startswith("opskit: refused: non-fast-forward update of refs/heads/master")
    assert out[2].startswith(f"opskit: refused: {first[:12]} on refs/tags/v0 has the tree")
    assert len(out) == 4
    assert [(e.data["ref"], e.data["rule"], e.data["old"], e.data["new"], e.data["hook"], e.sha)
            for e in h.events("lockdown.blocked")][1:] == [
        ("refs/heads/master", "non-fast-forward", second, first, "pre-receive", first),
        ("refs/tags/v0", "quarantine", ZERO, first, "pre-receive", first)]
    assert h.events("lockdown.blocked")[-1].data["reason"] == (
        f"tree {rev(h.sb.bare, f'{first}^{{tree}}')} was auto-reverted (event 5): HTTP 503")
    assert lockdown.pre_receive(svc_, [(second, ZERO, "refs/heads/master")], facts, j, out.append) == 1
    assert h.events("lockdown.blocked")[-1].sha is None  # a deletion has no commit


def test_release_quarantine_by_tree_commit_or_any_commit_with_that_tree(tmp_path: Path, state_dir: Path) -> None:
    from opskit.base.errors import UsageError
    from opskit.guard.lockdown import release_quarantine

    h = hooked_service(tmp_path, state_dir, install=False)
    s = h.settings()
    svc_ = s.service("svc")
    j = h.journal()
    bad = h.sb.tip()
    tree = rev(h.sb.bare, f"{bad}^{{tree}}")
    for ident in ("xyz", "abc", "  "):
        with pytest.raises(UsageError, match="is not a tree or commit id"):
            release_quarantine(s, j, svc_, ident, "me")
    assert release_quarantine(s, j, svc_, tree[:8], "me") == []  # nothing quarantined yet
    j.quarantine_add("other", tree, bad, 8, "another service's")  # not this service's to release
    assert release_quarantine(s, j, svc_, tree[:8], "me") == []
    j.quarantine_add("svc", tree, bad, 9, "HTTP 503")
    [row] = release_quarantine(s, j, svc_, tree[:8].upper(), "me")
    assert j.quarantined("other", tree) is not None
    [done] = [r for r in j.quarantine_list("svc", include_released=True) if r["event_id"] == 9]
    assert done["released_by"] == "me" and done["released"]
    assert (row["tree"], row["sha"], row["event_id"]) == (tree, bad, 9) and j.quarantined("svc", tree) is None
    ev = j.last("quarantine.released", "svc")
    assert ev is not None and ev.data == {"tree": tree, "reverted": bad, "rollback_event": 9, "by": "me"}
    j.quarantine_add("svc", tree, bad, 10, "again")
    assert [r["event_id"] for r in release_quarantine(s, j, svc_, bad[:10], "me")] == [10]  # by the commit
    # a re-push of the same tree as another commit: named by that commit
    git(h.sb.dev, "commit", "-q", "--allow-empty", "-m", "same tree")
    h.sb.push("master")
    same = h.sb.tip()
    j.quarantine_add("svc", tree, bad, 11, "third")
    assert [r["event_id"] for r in release_quarantine(s, j, svc_, same, "me")] == [11]
    j.quarantine_add("svc", tree, bad, 12, "x")
    j.quarantine_add("svc", "a" * 40, "b" * 40, 13, "y")
    j.quarantine_add("svc", "a" * 39 + "c", "d" * 40, 14, "z")
    with pytest.raises(UsageError, match="matches 2 quarantined trees; give more digits"):
        release_quarantine(s, j, svc_, "aaaa", "me")


def test_current_ref_reads_head_without_git(tmp_path: Path) -> None:
    from opskit.guard.lockdown import current_ref

    wt = tmp_path / "wt"
    git(tmp_path, "init", "-q", str(wt))
    assert current_ref(str(wt)) == "refs/heads/master"
    (wt / ".git" / "HEAD").write_text("0123456789abcdef0123456789abcdef01234567\n")
    assert current_ref(str(wt)) == "HEAD (detached)"
    linked = tmp_path / "linked"
    (linked / "gd").mkdir(parents=True)
    (linked / "gd" / "HEAD").write_bytes(b"ref: refs/heads/caf\xe9\n")
    (linked / ".git").write_text("gitdir: gd\n")
    assert current_ref(str(linked)) == "refs/heads/caf\ufffd"
    odd = linked / os.fsdecode(b"a:b-\xff")  # a colon and a non-UTF-8 byte in the gitdir path
    odd.mkdir()
    (odd / "HEAD").write_text("ref: refs/heads/side\n")
    (linked / ".git").write_bytes(b"gitdir: " + os.fsencode(odd.name) + b"\n")
    assert current_ref(str(linked)) == "refs/heads/side"
    assert current_ref(str(tmp_path / "nowhere")) is None
    (linked / ".git").write_text("no colon here\n")
    assert current_ref(str(linked)) is None


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
