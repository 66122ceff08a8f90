"""auto-revert, freeze and the way back (issue 3 item 3), on real git with a real service."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from opskit.base.errors import OpsError
from opskit.deploy.revert import auto_revert, is_revert_commit
from opskit.git.repo import Git
from opskit.notify import outbox_summary
from opskit.standins import free_port
from opskit.storage.journal import Journal
from opskit.views.status import collect, render
from tests.support.gitsandbox import git
from tests.support.pipeline import (
    Stage,
    deployed_stage,
    deployed_stage_fixture,  # noqa: F401 - the `st` fixture
    env_for,
    make_stage,
    seeded_stage,
)


def _worktrees(bare: Path) -> list[str]:
    return [ln for ln in git(bare, "worktree", "list", "--porcelain").stdout.splitlines() if ln.startswith("worktree ")]


def test_revert_conflict_leaves_nothing_half_done(st: Stage) -> None:
    merge = st.merge_feature({"service.mode": "crash\n", "app.txt": "v2\n"})
    on_top = st.sb.commit({"app.txt": "v3 (conflicts with the revert)\n"}, "landed on top")
    st.sb.push("master")
    head = st.worktree_head()
    lines: list[str] = []
    r = auto_revert(st.settings, st.journal(), "svc", commit=merge, reason="HTTP 503", write=lines.append)
    assert not r.ok and r.status == "conflict" and r.exit_code == 1
    assert r.reason.startswith(f"the revert of {merge[:12]} conflicts with commits that landed on top (app.txt)")
    assert r.reason.endswith("; nothing was changed")
    assert st.sb.tip() == on_top and st.worktree_head() == head  # repo and worktree untouched
    assert len(_worktrees(st.sb.bare)) == 1 and not git(st.sb.worktree, "status", "--porcelain").stdout
    j = st.journal()
    fail = j.last("rollback.fail", "svc")
    assert fail is not None and fail.data["conflicts"] == ["app.txt"]
    assert fail.chain is not None and fail.chain.startswith("r-")  # a by-hand revert's own chain
    assert not j.quarantine_list("svc") and j.frozen("svc") is None
    assert st.receiver is not None
    msgs = st.receiver.wait_for(1)
    assert msgs and "FAILED" in msgs[0].body["content"]


def test_auto_revert_by_hand_of_a_frozen_service_is_refused_and_changes_nothing(st: Stage) -> None:
    bad = st.good(mode="crash", message="crash")
    j = st.journal()
    j.kv_set("frozen", "svc", {"reason": "rollback failed at 03:55", "since": "2026-12-02T03:55:00Z"})
    tip, head, before = st.sb.tip(), st.worktree_head(), len(j.query())
    with pytest.raises(OpsError) as e:
        auto_revert(st.settings, j, "svc", commit=bad, reason="by hand", write=lambda _: None)
    assert e.value.message == "svc is frozen (rollback failed at 03:55); `opskit unfreeze svc` first"
    assert (st.sb.tip(), st.worktree_head(), len(j.query())) == (tip, head, before)


def test_revert_on_top_without_conflict_and_no_deploy(st: Stage) -> None:
    good_tree = Git(st.sb.bare).tree("HEAD")
    merge = st.merge_feature({"service.mode": "crash\n", "app.txt": "v2\n"})
    on_top = st.sb.commit({"other.txt": "unrelated\n"}, "landed on top")
    st.sb.push("master")
    head = st.worktree_head()
    r = auto_revert(st.settings, st.journal(), "svc", commit=merge, reason="gate failed", no_deploy=True,
                    write=lambda _: None)
    assert r.ok and r.status == "landed" and r.plan is not None and r.plan.strategy == "revert-on-top"
    g = Git(st.sb.bare)
    tip = st.sb.tip()
    assert g.parents(tip) == [on_top] and g.is_ancestor(merge, tip)
    assert g.out("show", f"{tip}:app.txt") == "v1" and g.out("show", f"{tip}:service.mode") == "healthy"
    assert g.out("show", f"{tip}:other.txt") == "unrelated" and g.tree(tip) != good_tree
    assert st.worktree_head() == head  # --no-deploy
    done = st.journal().last("rollback.complete", "svc")
    assert done is not None and done.data["deployed"] is False


def test_redeploy_of_revert_fails_freezes_without_loop(tmp_path: Path, opskit) -> None:  # type: ignore[no-untyped-def]
    st = deployed_stage(tmp_path, deploy="if [ -e {outage} ]; then echo 'disk full' >&2; exit 1; fi; {restart}")
    try:
        st.good(files={"app.txt": "v2\n"})
        st.outage_flag.write_text("1")  # the host breaks: every deploy fails from now on
        r = st.deploy()
        assert r.status == "failed" and r.exit_code == 1 and r.revert is not None and r.revert.status == "frozen"
        types = st.types()
        assert types.count("rollback.start") == 1 and types.count("rollback.fail") == 1
        assert types.count("service.frozen") == 1 and "rollback.complete" not in types
        j = st.journal()
        frozen = j.frozen("svc")
        assert frozen and "disk full" in frozen["reason"] and frozen["event_id"]
        assert st.receiver is not None
        assert any("FROZEN" in m.body["content"] for m in st.receiver.wait_for(1))
        # frozen: deploys refused with the reason, journaled once per commit, not once per try
        st.sync()
        new = st.good(files={"app.txt": "v3\n"})
        for _ in range(2):
            again = st.deploy(new)
            assert again.status == "frozen" and again.exit_code == 1 and "unfreeze" in again.reason
        assert sum(1 for e in j.query(service="svc", type_prefix="deploy.fail") if e.data.get("frozen")) == 1
        cli = opskit("deploy", "svc", env=env_for(st))
        assert cli.returncode == 1 and "frozen" in cli.stdout + cli.stderr
        status = "\n".join(render(collect(st.settings, j)))
        assert "frozen:      YES" in status
        # a human fixes the host and unfreezes
        st.outage_flag.unlink()
        u = opskit("unfreeze", "svc", "--json", env=env_for(st))
        assert u.returncode == 0 and json.loads(u.stdout)["unfrozen"] is True
        ev = j.last("service.unfrozen", "svc")
        assert ev is not None and ev.data["who"]
        assert st.deploy(new).ok
    finally:
        st.close()


@pytest.mark.parametrize("message, is_revert", [
    ("Auto-revert: svc: HTTP 503\n\nOpskit-Reverts: " + "a" * 40 + "\n", True),
    ("Auto-revert: svc: HTTP 503\n", True),                     # the subject alone
    ("Fix typo\n\nOpskit-Reverts: 0123abc\n", True),            # the trailer alone (a reworded revert)
    ("Fix typo\n\nOpskit-Reverts:   " + "f" * 40 + "  \n", True),
    ("Revert \"feature\"\n\nThis reverts commit " + "a" * 40 + ".\n", False),  # git's own revert
    ("Fix: Auto-revert: mentioned in the subject\n", False),
    ("Fix\n\nOpskit-Reverts: 012345\n", False),                  # 6 hex digits: not a commit id
    ("Fix\n\nOpskit-Reverts: nothing-here\n", False),
    ("Fix\n\nsee Opskit-Reverts: " + "a" * 40 + "\n", False),     # not a trailer line
    ("Fix\n\nOpskit-Reverts: " + "a" * 40 + " and more\n", False),
])
def test_is_revert_commit_knows_either_marker(message: str, is_revert: bool) -> None:
    assert is_revert_commit(message) is is_revert


@pytest.mark.parametrize("marker", ["subject", "trailer"])
def test_a_revert_is_never_reverted(st: Stage, marker: str) -> None:
    # Each marker alone must stop a second revert: a human may reword the subject of an
    # auto-revert, and a revert made by other tooling may carry only the subject.
    prev = st.sb.tip()
    message = ("Auto-revert: svc: by hand\n" if marker == "subject"
               else f"Put the old mode back\n\nOpskit-Reverts: {prev}\n")
    st.sb.commit({"service.mode": "crash\n"}, message)
    st.sb.push("master")
    r = st.deploy()
    assert r.status == "failed" and r.revert is not None and r.revert.status == "frozen"
    types = st.types()
    assert "rollback.start" not in types and types.count("service.frozen") == 1
    assert types.index("rollback.fail") < types.index("service.frozen")
    assert "refusing to revert a revert" in r.revert.reason
    assert st.journal().frozen("svc") is not None


def test_dry_run_prints_the_plan_and_changes_nothing(st: Stage, opskit) -> None:  # type: ignore[no-untyped-def]
    merge = st.merge_feature({"service.mode": "crash\n"})
    tip, head, n = st.sb.tip(), st.worktree_head(), len(st.types())
    r = opskit("auto-revert", "svc", "--commit", merge, "--dry-run", env=env_for(st))
    assert r.returncode == 0, r.stderr
    first_parent_tree = Git(st.sb.bare).tree(f"{merge}^1")
    assert "merge-first-parent" in r.stdout and first_parent_tree in r.stdout and merge[:10] in r.stdout
    assert "update-ref refs/heads/master" in r.stdout and "nothing was changed" in r.stdout
    assert (st.sb.tip(), st.worktree_head(), len(st.types())) == (tip, head, n)


def test_auto_revert_from_the_cli_reverts_and_reports_json(st: Stage, opskit) -> None:  # type: ignore[no-untyped-def]
    # By hand (or from cron), not from the pipeline: a commit that is live but bad.
    merge = st.merge_feature({"app.txt": "v2 with a bug the probe cannot see\n"})
    assert st.deploy(merge).status == "healthy"  # the probe does not see this one; a human does
    good_tree = Git(st.sb.bare).tree(f"{merge}^1")
    r = opskit("auto-revert", "svc", "--reason", "customers see v2 bugs", "--json", env=env_for(st))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)  # one JSON object, nothing else on stdout
    new = st.sb.tip()
    assert (doc["service"], doc["ok"], doc["status"], doc["exit_code"]) == ("svc", True, "reverted", 0)
    assert (doc["bad"], doc["revert"], doc["reverted"]) == (merge, new, [merge])
    assert doc["reason"] == "customers see v2 bugs" and doc["plan"]["strategy"] == "merge-first-parent"
    assert doc["plan"]["tree"] == good_tree == Git(st.sb.bare).tree(new)
    assert st.worktree_head() == new and st.journal().last_good("svc") == new
    assert Git(st.sb.bare).message(new).startswith("Auto-revert: svc: customers see v2 bugs")
    ev = st.journal().last("rollback.complete", "svc")
    assert ev is not None and doc["event_id"] is not None


def test_dry_run_in_process_returns_the_plan_and_takes_nothing(st: Stage) -> None:
    from opskit.base.errors import UsageError

    merge = st.merge_feature({"app.txt": "v2\n"})
    assert st.deploy().status == "healthy"  # live now: the one a human would revert
    tip, head, n = st.sb.tip(), st.worktree_head(), len(st.types())
    lines: list[str] = []
    r = auto_revert(st.settings, st.journal(), "svc", commit=merge[:12], dry_run=True, write=lines.append)
    assert (r.service, r.ok, r.status, r.reason, r.exit_code, r.bad, r.reverted) == (
        "svc", True, "planned", "reverted by hand (opskit auto-revert)", 0, merge, [merge])
    assert r.plan is not None and r.plan.strategy == "merge-first-parent"
    assert r.plan.tree == Git(st.sb.bare).tree(f"{merge}^1") and r.plan.bad == merge
    assert lines[0] == f"auto-revert plan for svc (master at {merge[:12]}):"
    assert lines[-1] == "dry run: nothing was changed"
    assert (st.sb.tip(), st.worktree_head(), len(st.types())) == (tip, head, n)
    # without --commit: what the worktree runs
    r = auto_revert(st.settings, st.journal(), "svc", dry_run=True, reason="by me", write=lines.append)
    assert r.bad == head == merge and r.reason == "by me" and r.status == "planned"
    with pytest.raises(UsageError) as e:
        auto_revert(st.settings, st.journal(), "svc", commit="nope", dry_run=True, write=lines.append)
    assert e.value.message == f"svc: --commit 'nope' is not a commit in {st.sb.bare}; fix the SHA"


def test_receiver_down_rollback_completes_and_message_is_queued(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/discord/1/tok-dead-Zq8xK2mVn4Lp7RtY"
    st = deployed_stage(tmp_path, receiver=False, notify_url=dead, retry_for=0.5)
    try:
        st.good(mode="crash")
        r = st.deploy()
        assert r.status == "reverted" and r.revert is not None and r.revert.ok
        j = st.journal()
        assert j.last("rollback.complete", "svc") is not None
        summary = outbox_summary(j)
        assert summary["ops"].get("queued", 0) >= 1
        assert "tok-dead" not in json.dumps([e.to_dict() for e in j.query()])  # the URL stays secret
    finally:
        st.close()


def test_hostile_names_pass_through_unharmed(tmp_path: Path) -> None:
    branch = "rel$(touch$IFS\"PWNED\")'x"
    st = make_stage(tmp_path, branch=branch)
    try:
        r = st.deploy()
        assert r.ok, r
        good_tree = Git(st.sb.bare).tree(st.sb.tip(branch))
        assert Git(st.sb.worktree).current_branch() == branch
        hostile = "ship it $(touch PWNED2) `touch PWNED3` \"q\" 'q'"
        st.sb.commit({"file with spaces 'and' $(quotes).txt": "x\n", "service.mode": "crash\n"}, hostile)
        (st.sb.dev / "msg").write_bytes(b"non-utf8 subject \xff\xfe $(touch PWNED4)")
        git(st.sb.dev, "commit", "-q", "--allow-empty", "-F", "msg")
        (st.sb.dev / "msg").unlink()
        git(st.sb.dev, "push", "-q", "origin", branch)
        r = st.deploy()
        assert r.status == "reverted", r
        for root in (tmp_path, Path.cwd()):
            assert not list(root.rglob("PWNED*"))
        j = st.journal()
        start = j.last("rollback.start", "svc")
        # two commits went live at once → the tree of the last known-good deploy
        assert start is not None and len(start.data["reverted"]) == 2 and start.data["strategy"] == "last-good"
        g = Git(st.sb.bare)
        tip = st.sb.tip(branch)
        assert g.tree(tip) == good_tree
        msg = g.message(tip)
        assert "$(touch PWNED2)" in msg and "non-utf8 subject" in msg
        assert not (st.sb.worktree / "file with spaces 'and' $(quotes).txt").exists()
        json.dumps([e.to_dict() for e in j.query(service="svc")])
    finally:
        st.close()


def test_pull_mode_deploys_only_when_the_branch_moved(tmp_path: Path) -> None:
    st = make_stage(tmp_path, repo="file://" + str(tmp_path / "sb" / "git" / "svc.git"))
    try:
        assert st.settings.service("svc").pull_mode
        assert st.deploy().status == "healthy"
        n = len(st.types())
        assert st.deploy().status == "nothing" and len(st.types()) == n
        bad = st.good(mode="crash")
        r = st.deploy()
        assert r.status == "reverted" and r.revert is not None
        tip = st.sb.tip()
        assert tip == r.revert.revert_sha and Git(st.sb.bare).is_ancestor(bad, tip)  # pushed, not forced
        assert st.deploy().status == "nothing"  # the revert is what is deployed: no loop
    finally:
        st.close()


def test_status_shows_verdict_freeze_quarantine_outbox(st: Stage, opskit) -> None:  # type: ignore[no-untyped-def]
    st.good(mode="crash")
    st.deploy()
    r = opskit("status", "--json", env=env_for(st))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    s = data["services"][0]
    assert s["name"] == "svc" and s["deployed"]["subject"].startswith("Auto-revert: svc:")
    assert s["last_verdict"]["status"] == "healthy" and s["last_verdict"]["kind"] == "revert"
    assert s["quarantined"] == 1 and s["frozen"] is None and s["in_progress"] is None
    assert isinstance(data["outbox"], dict)
    text = "\n".join(render(collect(st.settings, Journal(st.settings.state_dir))))
    assert "quarantined: 1 tree(s)" in text and "frozen:      no" in text
    assert os.environ["OPSKIT_STATE_DIR"] == str(st.settings.state_dir)


@pytest.mark.parametrize("where", ["older", "off-branch"])
def test_failed_deploy_of_an_older_commit_restores_the_last_good_without_a_commit(tmp_path: Path,
                                                                                 where: str) -> None:
    st = seeded_stage(tmp_path)
    try:
        if where == "older":
            broken = st.good(mode="crash", message="broke it")
        else:  # a commit on a side branch, deployed by hand with --sha: never on master
            git(st.sb.dev, "checkout", "-q", "-b", "experiment")
            broken = st.sb.commit({"service.mode": "crash\n"}, "broke it")
            git(st.sb.dev, "push", "-q", "origin", "experiment")
            git(st.sb.dev, "checkout", "-q", st.sb.branch)
        fixed = st.good(mode="healthy", files={"fix.txt": "fixed\n"}, message="fixed it")
        assert st.deploy(fixed).ok
        r = st.deploy(broken)  # a human "rolls back" to a commit that never worked
        assert r.status == "reverted" and r.revert is not None
        rr = r.revert
        assert (rr.service, rr.ok, rr.status, rr.bad, rr.revert_sha, rr.reverted, rr.exit_code) == (
            "svc", True, "reverted", broken, fixed, [broken], 0)
        assert st.sb.tip() == fixed  # no revert commit undoing good work on the branch
        assert st.worktree_head() == fixed
        j = st.journal()
        start, done = j.last("rollback.start", "svc"), j.last("rollback.complete", "svc")
        assert start is not None and done is not None and rr.event_id == start.id
        reason = start.data["reason"]
        assert reason.startswith("no healthy probe within") and start.sha == broken
        assert start.data == {"bad": broken, "reverted": [broken], "good": fixed, "strategy": "redeploy-last-good",
                              "reason": reason, "stage": "health", "trigger_event": start.data["trigger_event"]}
        assert isinstance(start.data["trigger_event"], int)
        assert (done.sha, done.data) == (fixed, {
            "reverted": [broken], "bad": broken, "revert": fixed, "reason": reason,
            "strategy": "redeploy-last-good", "deployed": True, "rollback_event": start.id})
        rows = {row["sha"]: (row["status"], row["kind"]) for row in j.deploys("svc")}
        assert rows[broken] == ("reverted", "deploy") and j.last_good("svc") == fixed
        # a tree that never reached the branch is kept from coming back by a push; one on the
        # branch already is history there, and pushing it again is not possible
        quarantined = [(q["tree"], q["sha"], q["event_id"]) for q in j.quarantine_list("svc")]
        bare = Git(st.sb.bare)
        assert quarantined == ([] if where == "older" else [(bare.tree(broken), broken, start.id)])
        assert st.receiver is not None
        [told] = st.receiver.wait_for(1, timeout=15)
        text = told.body["content"]
        assert f"svc: deploy of {broken[:12]} broke it failed and was rolled back." in text
        assert f"Now live: {fixed[:12]} (the last good deploy), healthy." in text
        assert f"The branch was not changed ({broken[:12]} is not new work on master)." in text
        assert f"Event: #{start.id} (`opskit events --service svc --type rollback`)" in text
    finally:
        st.close()


def test_git_failure_in_the_revert_redeploy_freezes_and_notifies(tmp_path: Path) -> None:
    """The bad deploy leaves .git/index.lock behind (a killed git, a full disk): the revert lands
    but its redeploy cannot check out. The rollback ends (rollback.fail), the service is frozen
    and a human is told, instead of the error escaping with the bad commit live and unreported."""
    st = deployed_stage(tmp_path, deploy="{restart}; if grep -q crash service.mode; then touch .git/index.lock; fi")
    try:
        j = st.journal()
        box = [r[0] for r in j.conn.execute("SELECT id FROM outbox")]
        bad = st.good(mode="crash")
        r = st.deploy()
        assert r.status == "failed" and r.revert is not None and r.revert.status == "frozen"
        assert "could not be deployed" in r.revert.reason and "git checkout" in r.revert.reason
        types = st.types()
        assert types.count("rollback.start") == 1 and types.count("rollback.fail") == 1
        assert types.index("rollback.fail") < types.index("service.frozen") and "rollback.complete" not in types
        fail = j.last("rollback.fail", "svc")
        assert fail is not None and fail.data["bad"] == bad and fail.data["crashed"] is True
        frozen = j.frozen("svc")
        assert frozen and frozen["event_id"] == fail.id
        new = [(row[1], row[2]) for row in j.conn.execute("SELECT id, title, level FROM outbox") if row[0] not in box]
        assert [lvl for _, lvl in new] == ["critical"] and "rollback failed" in new[0][0]
        (st.sb.worktree / ".git" / "index.lock").unlink()
        assert st.deploy().status == "frozen"  # refused until a human unfreezes, not "nothing"
    finally:
        st.close()
