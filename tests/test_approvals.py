"""Parked changes and the humans who decide them (issue 5 item 2), through real pushes and the real CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from opskit.base.clock import FakeClock
from opskit.chain import approvals
from opskit.git.repo import Git
from tests.support.chain import ChainStage, chain_stage_fixture, make_chain_stage, order  # noqa: F401 - a fixture
from tests.support.gitsandbox import git


def _park(cs: ChainStage, name: str = "feature/h", **files: str) -> approvals.Parked:
    cs.feature(name, {"review.exit": "3\n", **files})
    p = cs.push(name)
    assert "parked as change #" in p.stderr, p.stderr
    (row,) = [r for r in approvals.pending(cs.st.journal()) if r.raw_branch == name]
    return row


def test_review_exit_3_parks_and_approve_deploys(cs: ChainStage) -> None:
    before = cs.tip()
    row = _park(cs, app="x")
    assert cs.tip() == before and row.status == "parked" and row.base == before
    ev = cs.last("review.needs-human")
    assert ev.data["approval"] == row.id and ev.chain == row.chain and ev.sha == row.sha
    assert cs.st.receiver is not None
    msg = cs.st.receiver.wait_for(1)[0].body["content"]
    assert f"opskit approve {row.id}" in msg and f"opskit reject {row.id}" in msg and "feature/h" in msg
    listed = cs.json_lines("pending", "--json")
    assert [r["id"] for r in listed] == [row.id] and listed[0]["status"] == "parked"
    status = cs.json_lines("status", "--json")[0]["services"][0]["chain"]
    assert [p["id"] for p in status["parked"]] == [row.id]
    plain = cs.cli("status")
    assert f"#{row.id} feature/h" in plain.stdout

    p = cs.cli("approve", str(row.id), env={"SUDO_USER": "alice"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "merged feature/h into master" in p.stdout and "deployed" in p.stdout
    tip = cs.tip()
    assert Git(cs.sb.bare).parents(tip) == [before, row.sha] and cs.st.worktree_head() == tip
    assert "approved by alice" in Git(cs.sb.bare).message(tip)
    done = approvals.get(cs.st.journal(), row.id)
    assert done is not None and done.status == "approved" and done.decided_by == "alice" and done.decided_at
    types = [e.type for e in cs.events(chain=row.chain)]
    assert order(types, "push.received", "test.pass", "review.needs-human", "review.pass", "merge.complete",
                 "deploy.complete", "health.pass"), types
    human = [e for e in cs.events("review.pass", chain=row.chain) if e.data.get("human")]
    assert human and human[0].data["decided_by"] == "alice"
    assert cs.json_lines("pending", "--json") == []
    # decided already: exit 1, one clear line; unknown: exit 2
    again = cs.cli("approve", str(row.id))
    assert again.returncode == 1 and "already decided" in again.stderr and "approved by alice" in again.stderr
    unknown = cs.cli("approve", "9999")
    assert unknown.returncode == 2 and "no parked change #9999" in unknown.stderr


def test_reject_ends_it(cs: ChainStage) -> None:
    before = cs.tip()
    row = _park(cs)
    p = cs.cli("reject", str(row.id), "--reason", "needs a migration first", env={"SUDO_USER": "bob"})
    assert p.returncode == 0, p.stderr
    assert "rejected by bob" in p.stdout
    ev = cs.last("review.fail")
    assert ev.data["decided_by"] == "bob" and ev.data["reason"] == "needs a migration first" and ev.chain == row.chain
    assert cs.st.receiver is not None
    msgs = cs.st.receiver.wait_for(2)
    assert "REJECTED by bob" in msgs[-1].body["content"] and "needs a migration first" in msgs[-1].body["content"]
    assert cs.tip() == before and not cs.events("merge")
    late = cs.cli("approve", str(row.id))
    assert late.returncode == 1 and "rejected by bob" in late.stderr
    no_reason = cs.cli("reject", str(row.id), "--reason", " ")
    assert no_reason.returncode == 2
    # --json: the decided row, one object
    other = _park(cs, "feature/j")
    pj = cs.cli("reject", str(other.id), "--reason", "not now", "--json", env={"SUDO_USER": "carol"})
    assert pj.returncode == 0, pj.stderr
    doc = json.loads(pj.stdout)
    assert (doc["id"], doc["status"], doc["decided_by"], doc["branch"], doc["sha"]) == (
        other.id, "rejected", "carol", "feature/j", other.sha)
    assert doc["reason"] == "not now" and "ref" not in doc and cs.tip() == before
    assert cs.cli("reject", "4242", "--reason", "x").returncode == 2


def test_failed_test_parks_when_test_failure_is_human(tmp_path: Path) -> None:
    c = make_chain_stage(tmp_path, test_failure="human")
    try:
        before = c.tip()
        c.feature("feature/t", {"test.fail": "1\n"})
        p = c.push("feature/t")
        assert "parked as change #" in p.stderr
        (row,) = approvals.pending(c.st.journal())
        assert "test failed" in (row.cause or "")
        assert "assert 1 == 2" in c.last("review.needs-human").data["tail"]
        assert not c.events("review.pass") and c.tip() == before
    finally:
        c.st.close()


def test_newer_push_supersedes_a_parked_change(cs: ChainStage) -> None:
    old = _park(cs)
    cs.feature("feature/h", {"more.txt": "1\n"})  # the same branch, one commit on
    p = cs.push("feature/h")
    assert f"parked change #{old.id}" in p.stderr and "superseded" in p.stderr
    ended = approvals.get(cs.st.journal(), old.id)
    assert ended is not None and ended.status == "superseded"
    ev = cs.last("push.superseded")
    assert ev.chain == old.chain and ev.data["approval"] == old.id
    assert [r.id for r in approvals.pending(cs.st.journal())] != [old.id]
    late = cs.cli("approve", str(old.id))
    assert late.returncode == 1 and "superseded" in late.stderr


def test_approve_after_the_branch_was_deleted(cs: ChainStage) -> None:
    before = cs.tip()
    row = _park(cs)
    # the developer deletes the branch by push while its change waits for a human
    git(cs.sb.dev, "push", "-q", "origin", ":feature/h")
    p = cs.cli("approve", str(row.id), "--json")
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["status"] == "deleted" and "deleted" in out["reason"]
    assert cs.tip() == before
    ended = approvals.get(cs.st.journal(), row.id)
    assert ended is not None and ended.status == "superseded"


def test_overdue_change_is_reminded_once(cs: ChainStage) -> None:
    row = _park(cs)
    assert cs.st.receiver is not None
    cs.st.receiver.wait_for(1)
    created = dt.datetime.fromisoformat(row.created.replace("Z", "+00:00"))
    clock = FakeClock(created + dt.timedelta(hours=23))
    s, j = cs.st.settings, cs.st.journal()
    assert approvals.remind_overdue(s, j, clock) == 0
    clock.advance(2 * 3600)
    assert approvals.remind_overdue(s, j, clock) == 1
    msgs = cs.st.receiver.wait_for(2)
    assert len(msgs) == 2 and f"opskit approve {row.id}" in msgs[-1].body["content"]
    assert "waited 25h" in msgs[-1].body["content"]
    clock.advance(24 * 3600)
    assert approvals.remind_overdue(s, j, clock) == 0  # once, not every hour
    assert len(cs.events("review.reminded")) == 1


def test_approval_timeout_comes_from_the_service(tmp_path: Path) -> None:
    c = make_chain_stage(tmp_path, approval_timeout=600)
    try:
        row = _park(c)
        created = dt.datetime.fromisoformat(row.created.replace("Z", "+00:00"))
        clock = FakeClock(created + dt.timedelta(seconds=599))
        s, j = c.st.settings, c.st.journal()
        assert approvals.remind_overdue(s, j, clock) == 0
        clock.advance(2)
        assert approvals.remind_overdue(s, j, clock) == 1
    finally:
        c.st.close()


def test_parked_branch_with_non_utf8_name_is_approved_exactly(cs: ChainStage) -> None:
    name = "feature/odd-'$(x)'-\udcfe"
    row = _park(cs, name=name)
    assert row.branch == "feature/odd-'$(x)'-\ufffd" and row.raw_branch == name
    listed = cs.json_lines("pending", "--json")
    assert listed[0]["branch"] == row.branch and "ref" not in listed[0]
    p = cs.cli("approve", str(row.id))
    assert p.returncode == 0, p.stdout + p.stderr
    assert Git(cs.sb.bare).parents(cs.tip())[1] == row.sha


def test_cron_check_sends_the_reminder_once(cs: ChainStage) -> None:
    from opskit import jobs

    row = _park(cs)
    created = dt.datetime.fromisoformat(row.created.replace("Z", "+00:00"))
    clock = FakeClock(created + dt.timedelta(hours=25))
    s, j = cs.st.settings, cs.st.journal()
    first = jobs.cron_check(s, j, clock, crontab_text="")
    assert first.approvals_reminded == 1
    clock.advance(300)
    assert jobs.cron_check(s, j, clock, crontab_text="").approvals_reminded == 0
    assert len(cs.events("review.reminded")) == 1
