"""The feature-branch chain on real git: pushes through installed hooks, a real service (issue 5 item 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from opskit.base.lock import ServiceLock
from opskit.chain.feature import ChainResult, run_now
from opskit.git.repo import Git
from opskit.views.status import collect, render
from tests.support.chain import ChainStage, chain_stage_fixture, make_chain_stage, order  # noqa: F401 - a fixture
from tests.support.gitsandbox import git
from tests.support.pipeline import env_for

CHAIN_TYPES = ("push.received", "test.pass", "review.pass", "merge.complete", "deploy.complete", "health.pass")


def test_feature_push_is_tested_reviewed_merged_deployed(cs: ChainStage) -> None:
    before = cs.tip()
    head = cs.feature("feature/x", {"app.txt": "v2\n"}, message="make it v2")
    p = cs.push("feature/x")
    assert "remote:" in p.stderr and "merged feature/x into master" in p.stderr, p.stderr
    assert "3 passed" in p.stderr and "✔ healthy:" in p.stderr
    g = Git(cs.sb.bare)
    tip = cs.tip()
    # a real merge commit: first parent the old tip, so `git revert -m 1` undoes exactly it
    assert g.parents(tip) == [before, head]
    msg = g.message(tip)
    push_ev = cs.last("push.received")
    assert msg.startswith("Merge feature/x into master") and f"Opskit-Chain: {push_ev.chain}" in msg
    assert cs.st.worktree_head() == tip and (cs.sb.worktree / "app.txt").read_text() == "v2\n"
    with urllib.request.urlopen(f"http://127.0.0.1:{cs.st.port}/health", timeout=2) as resp:
        assert resp.status == 200
    # the CLI's event stream shows every step, all with the push's chain id
    events = cs.json_lines("events", "--json", "--service", "svc")
    mine = [e for e in events if e.get("chain") == push_ev.chain]
    types = [e["type"] for e in mine]
    assert order(types, *CHAIN_TYPES), types
    assert all(e.get("commit") for e in mine)  # every step carries the commit it is about
    assert next(e for e in mine if e["type"] == "merge.complete")["commit"] == tip
    assert next(e for e in mine if e["type"] == "test.pass")["commit"] == head
    # test and review ran in throwaway checkouts (sandboxed), never in production, and were cleaned up
    for what in ("test", "review"):
        (where,) = cs.seen(f"{what}.pass", "pwd: ")
        assert where != str(cs.sb.worktree) and not Path(where).exists()
        assert cs.last(f"{what}.pass").data["sandbox"] == "bwrap"
    env = dict(ln.split("=", 1) for ln in cs.seen("review.pass", "env: "))
    assert env["OPSKIT_HEAD"] == head and env["OPSKIT_BASE"] == before and env["OPSKIT_BRANCH"] == "feature/x"
    assert env["OPSKIT_RANGE"] == f"{before}..{head}" and env["OPSKIT_CHAIN"] == push_ev.chain
    assert env["OPSKIT_SERVICE"] == "svc"
    assert cs.worktrees_left() == []
    # status --json: nothing in progress any more, nothing parked
    status = cs.json_lines("status", "--json")[0]["services"][0]
    assert status["chain"] == {"in_progress": [], "parked": []}


def test_feature_whose_service_will_not_start_is_reverted(cs: ChainStage) -> None:
    before = cs.tip()
    cs.feature("feature/bad", {"service.mode": "crash\n", "app.txt": "v3\n"}, message="crash it")
    p = cs.push("feature/bad")
    assert "health gate failed" in p.stderr, p.stderr
    g = Git(cs.sb.bare)
    tip = cs.tip()
    merge = cs.last("merge.complete").data["merge"]
    assert g.parents(tip) == [merge] and g.is_ancestor(merge, tip)
    assert g.tree(tip) == g.tree(f"{merge}^1") == g.tree(before)  # the revert undoes exactly the merge
    assert cs.st.worktree_head() == tip
    chain = cs.last("push.received").chain
    types = [e.type for e in cs.events(chain=chain)]
    assert order(types, "merge.complete", "deploy.complete", "health.fail", "rollback.start", "rollback.complete")
    assert cs.st.receiver is not None
    assert "reverted" in cs.st.receiver.wait_for(1)[0].body["content"]


def test_failing_test_stops_the_chain(cs: ChainStage) -> None:
    before = cs.tip()
    assert cs.st.receiver is not None
    secret = cs.st.receiver.url("discord")  # a test that prints the webhook URL must not leak it
    cs.feature("feature/f", {"test.fail": f"calling {secret}\n"})
    p = cs.push("feature/f")
    assert "test failed" in p.stderr and "calling" in p.stderr and secret not in p.stderr
    assert cs.tip() == before and cs.st.worktree_head() == before  # branch and production untouched
    ev = cs.last("test.fail")
    assert "assert 1 == 2" in ev.data["tail"] and ev.data["exit"] == 1
    assert "calling ***" in ev.data["tail"] and secret not in ev.data["tail"]
    assert not cs.events("review") and not cs.events("merge")
    msg = cs.st.receiver.wait_for(1)[0].body["content"]
    assert "feature/f" in msg and "assert 1 == 2" in msg and secret not in msg


def test_hanging_test_is_bounded_by_test_timeout(tmp_path: Path) -> None:
    c = make_chain_stage(tmp_path, test_timeout=1)
    try:
        before = c.tip()
        c.feature("feature/h", {"test.hang": "1\n"})
        c.push("feature/h")  # returns: the 60 s test was stopped at test_timeout
        ev = c.last("test.fail")
        assert ev.data["timed_out"] is True and "timed out after 1s" in ev.data["reason"]
        assert "hanging" in ev.data["tail"] and c.tip() == before
    finally:
        c.st.close()


def test_test_printing_megabytes_keeps_only_the_tail(cs: ChainStage) -> None:
    cs.feature("feature/spam", {"test.spam": "1\n"})
    p = cs.push("feature/spam")
    ev = cs.last("test.fail")
    tail = ev.data["tail"].splitlines()
    assert tail[-1] == "LAST LINE" and len(tail) <= 40
    assert p.stderr.count("spam line") <= 201 and "output continues" in p.stderr  # the pusher is spared too


def test_review_missing_or_not_executable(tmp_path: Path) -> None:
    c = make_chain_stage(tmp_path, review="./ci/review.sh")
    try:
        before = c.tip()
        c.feature("feature/r", {"app.txt": "r\n"})
        c.push("feature/r")
        ev = c.last("review.fail")
        assert "not found" in ev.data["reason"] and ev.data["exit"] == 127 and c.tip() == before
        c.feature("feature/r", {"ci/review.sh": "#!/bin/sh\nexit 0\n"})  # committed without +x
        c.push("feature/r")
        ev = c.last("review.fail")
        assert "not executable" in ev.data["reason"] and ev.data["exit"] == 126 and c.tip() == before
        assert not c.events("merge")
    finally:
        c.st.close()


def test_review_rejects(cs: ChainStage) -> None:
    before = cs.tip()
    cs.feature("feature/no", {"review.exit": "1\n"})
    p = cs.push("feature/no")
    assert "review rejected" in p.stderr
    ev = cs.last("review.fail")
    assert ev.data["verdict"] == "rejected" and "reviewing" in ev.data["tail"]
    assert cs.tip() == before


def test_merge_conflict_leaves_nothing_half_merged(cs: ChainStage) -> None:
    base = cs.tip()
    cs.feature("feature/a", {"app.txt": "from a\n"})
    cs.push("feature/a")
    landed = cs.tip()
    assert landed != base
    cs.feature("feature/b", {"app.txt": "from b\n"}, base=base)
    p = cs.push("feature/b")
    assert "conflicts" in p.stderr
    ev = cs.last("merge.fail")
    assert ev.data["conflicts"] == ["app.txt"] and "app.txt" in ev.data["reason"]
    assert cs.tip() == landed and cs.st.worktree_head() == landed
    assert cs.worktrees_left() == []
    assert not (cs.sb.bare / "MERGE_HEAD").exists()


def test_ff_only(tmp_path: Path) -> None:
    c = make_chain_stage(tmp_path, merge="ff")
    try:
        base = c.tip()
        a = c.feature("feature/a", {"a.txt": "a\n"})
        c.push("feature/a")
        assert c.tip() == a  # fast-forwarded: no merge commit
        c.feature("feature/b", {"b.txt": "b\n"}, base=base)
        c.push("feature/b")
        ev = c.last("merge.fail")
        assert "cannot fast-forward" in ev.data["reason"] and "rebase" in ev.data["reason"]
        assert c.tip() == a
    finally:
        c.st.close()


def test_later_push_supersedes_a_chain_waiting_for_the_lock(cs: ChainStage) -> None:
    settings = cs.st.settings
    lock = ServiceLock(settings.state_dir, "svc", wait=5)
    lock.acquire()
    try:
        first = cs.feature("feature/x", {"x.txt": "1\n"})
        p1 = cs.push_async("feature/x")
        cs.wait_chain_step("waiting for the lock", 1)
        second = cs.feature("feature/x", {"x.txt": "2\n"})
        p2 = cs.push_async("feature/x")
        cs.wait_chain_step("waiting for the lock", 2)
        # opskit status shows both chains, at which step and since when
        shown = collect(settings, cs.st.journal())["services"][0]["chain"]["in_progress"]
        assert sorted(p["sha"] for p in shown) == sorted([first, second])
        assert all(p["step"] == "waiting for the lock" and p["alive"] and p["since"] for p in shown)
        assert "feature/x" in "\n".join(render(collect(settings, cs.st.journal())))
    finally:
        lock.release()
    out1 = p1.communicate(timeout=60)[1]
    out2 = p2.communicate(timeout=60)[1]
    assert "superseded" in out1, out1
    g = Git(cs.sb.bare)
    assert g.parents(cs.tip())[1] == second  # the newer push was merged, the older one never on its own
    sup = cs.last("push.superseded")
    assert sup.sha == first and sup.data["by"] == second and not sup.data["deleted"]
    assert [e.data["head"] for e in cs.events("merge.complete")] == [second]
    assert "✔ healthy:" in out2


def test_branch_deleted_while_its_chain_waits(cs: ChainStage) -> None:
    settings = cs.st.settings
    before = cs.tip()
    head = cs.feature("feature/gone", {"g.txt": "1\n"})
    lock = ServiceLock(settings.state_dir, "svc", wait=5)
    lock.acquire()
    results: list[ChainResult] = []
    try:
        # a fetch into the bare repo runs no receive hook: the chain under test is the only one
        git(cs.sb.bare, "fetch", "-q", str(cs.sb.dev), "refs/heads/feature/gone:refs/heads/feature/gone")
        t = threading.Thread(target=lambda: results.append(run_now(
            settings, cs.st.journal(), "svc", "refs/heads/feature/gone", head, chain="p-test", write=lambda _: None)))
        t.start()
        cs.wait_chain_step("waiting for the lock", 1)
        git(cs.sb.bare, "update-ref", "-d", "refs/heads/feature/gone")
    finally:
        lock.release()
    t.join(30)
    (r,) = results
    assert r.status == "deleted" and r.exit_code == 1 and "deleted" in r.reason
    ev = cs.last("push.superseded")
    assert ev.data["deleted"] is True and ev.chain == "p-test"
    assert cs.tip() == before and not cs.events("merge")


def test_background_chain_returns_at_once(tmp_path: Path) -> None:
    c = make_chain_stage(tmp_path, background=True, test="sleep 2; echo 3 passed")
    try:
        before = c.tip()
        head = c.feature("feature/bg", {"bg.txt": "1\n"})
        # `opskit events --follow` from another terminal sees the chain as it happens
        follow = subprocess.Popen([sys.executable, "-m", "opskit", "events", "--follow", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env={**os.environ, **env_for(c.st)})
        try:
            p = c.push("feature/bg")
            # the push came back while the chain was still testing (its test alone takes 2 s)
            assert "in the background" in p.stderr, p.stderr
            assert c.tip() == before and not c.events("test.pass")
            chain = c.last("push.received").chain
            seen: list[str] = []
            assert follow.stdout is not None
            for line in follow.stdout:  # bounded by the chain's end (or the test's timeout)
                ev = json.loads(line)
                if ev.get("chain") == chain:
                    seen.append(ev["type"])
                if ev["type"].startswith("health."):
                    break
        finally:
            follow.kill()
            follow.wait(10)
        assert order(seen, *CHAIN_TYPES[1:]), seen
        assert Git(c.sb.bare).parents(c.tip()) == [before, head]
        assert order([e.type for e in c.events(chain=chain)], *CHAIN_TYPES)
        assert "deployed" in "".join(p.read_text() for p in (c.st.settings.state_dir / "logs").glob("push-svc-*.log"))
    finally:
        c.st.close()


def test_nothing_is_merged_when_the_service_is_frozen_while_its_chain_runs(cs: ChainStage) -> None:
    # Pre-receive refuses a feature push to a frozen service; a freeze that lands after the push
    # was taken (here: while its chain waits for the lock) still stops it before the merge.
    before = cs.tip()
    cs.feature("feature/z", {"z.txt": "1\n"})
    lock = ServiceLock(cs.st.settings.state_dir, "svc", wait=5)
    lock.acquire()
    try:
        p = cs.push_async("feature/z")
        cs.wait_chain_step("waiting for the lock", 1)
        cs.st.journal().kv_set("frozen", "svc", {"reason": "revert failed too", "event_id": 1, "since": "x"})
    finally:
        lock.release()
    out = p.communicate(timeout=60)[1]
    assert "frozen" in out and p.returncode == 0, out
    assert cs.tip() == before and not cs.events("merge")
    assert cs.last("deploy.fail").data["frozen"] is True


def _remote(stderr: str) -> list[str]:
    """The hook's lines as the pusher reads them (git pads each `remote:` line with blanks)."""
    return [ln[len("remote: "):].rstrip() for ln in stderr.splitlines() if ln.startswith("remote: ")]


def test_a_feature_push_to_a_frozen_service_is_refused_at_push_time_until_unfreeze(cs: ChainStage) -> None:
    cs.feature("feature/old", {"old.txt": "1\n"})
    cs.push("feature/old")  # deployed; its branch stays, to be deleted while frozen
    before, seen = cs.tip(), cs.st.journal().last_event_id()
    frozen = cs.cli("freeze", "svc", "--reason", "db migration")
    assert frozen.returncode == 0, frozen.stderr
    state = cs.st.journal().frozen("svc")
    assert state is not None and state["reason"].startswith("frozen by ")
    head = cs.feature("feature/f", {"f.txt": "1\n"}, message="while frozen")
    p = cs.push("feature/f", check=False)
    assert p.returncode != 0
    # who, when and why in the first line (a hand freeze's reason names who), what to do in the next
    assert _remote(p.stderr)[:2] == [
        f"opskit: refused: service 'svc' is frozen since {state['since']}: {state['reason']}",
        "  refs/heads/feature/f would be tested, merged and deployed, so it was not taken (nothing tested, "
        "nothing merged). A human must fix it first, then: opskit unfreeze svc — and push it again."], p.stderr
    assert "3 passed" not in p.stderr and cs.tip() == before
    assert git(cs.sb.bare, "rev-parse", "--verify", "-q", "refs/heads/feature/f", check=False).returncode != 0
    after = [e for e in cs.events() if e.id > seen]
    assert [e.type for e in after] == ["service.frozen", "lockdown.blocked"], [e.type for e in after]
    assert after[1].data["rule"] == "frozen" and after[1].data["ref"] == "refs/heads/feature/f"
    # the deploy branch's refusal is as it was: no `by`, the unfreeze line
    master = git(cs.sb.dev, "push", "origin", f"{head}:refs/heads/master", check=False)
    assert master.returncode != 0
    assert _remote(master.stderr)[:2] == [
        f"opskit: refused: service 'svc' is frozen since {state['since']}: {state['reason']}",
        "  A human must fix it first, then: opskit unfreeze svc"], master.stderr
    # deleting a feature branch deploys nothing: allowed while frozen, and starts no chain
    gone = cs.push(":feature/old", check=False)
    assert gone.returncode == 0, gone.stderr
    assert git(cs.sb.bare, "rev-parse", "--verify", "-q", "refs/heads/feature/old", check=False).returncode != 0
    assert not [e for e in cs.events() if e.id > seen and e.type.split(".")[0] in ("test", "merge", "deploy")]
    # after the unfreeze the very same push is taken, tested, merged and deployed
    assert cs.cli("unfreeze", "svc").returncode == 0
    p = cs.push("feature/f")
    assert "3 passed" in p.stderr and "✔ healthy:" in p.stderr, p.stderr
    assert Git(cs.sb.bare).parents(cs.tip()) == [before, head] and cs.st.worktree_head() == cs.tip()
    chain = cs.last("push.received").chain
    assert order([e.type for e in cs.events(chain=chain)], *CHAIN_TYPES)


def test_branch_names_are_data_not_shell(tmp_path: Path) -> None:
    # Unsandboxed on purpose: a shell injection from inside the test or review must be able to
    # create the marker, or this test could not fail; and the exact bytes go through a file.
    c = make_chain_stage(tmp_path, sandbox="none")
    try:
        _branch_names_are_data(c)
    finally:
        c.st.close()


def _branch_names_are_data(cs: ChainStage) -> None:
    pwned = cs.probe / "pwned"
    name = f"feature/it's-$(touch${{IFS}}{pwned})-`id`-ü\udcff"
    head = cs.feature(name, {"odd.txt": "1\n"}, message="odd $(name) 'quotes'")
    cs.push(name)
    g = Git(cs.sb.bare)
    assert g.parents(cs.tip())[1] == head
    subject = g.subject(cs.tip())
    assert "$(touch${IFS}" in subject and "`id`" in subject and "ü" in subject
    assert not pwned.exists()
    env = (cs.probe / "review.env").read_bytes()
    assert b"OPSKIT_BRANCH=feature/it's-$(touch" in env and b"\xc3\xbc\xff" in env  # the exact bytes


def test_a_failing_ref_does_not_drop_the_other_refs_of_the_push(tmp_path: Path) -> None:
    """One push updates master and a feature branch; the deploy of master fails (git cannot check
    out: a stale .git/index.lock). The feature branch is still handled, the failure is journaled
    and notified once, and the hook's exit code says something failed."""
    from opskit.chain import approvals
    from opskit.chain.routing import on_post_receive
    from tests.support.gitsandbox import rev

    cs = make_chain_stage(tmp_path, direct_push=True)
    try:
        old_master = cs.tip()
        git(cs.sb.dev, "checkout", "-q", "master")
        new_master = cs.sb.commit({"app.txt": "v2\n"}, "good")
        git(cs.sb.bare, "fetch", "-q", str(cs.sb.dev), "master:master")  # lands without running hooks
        cs.feature("feature/y", {"review.exit": "3\n"}, base=new_master)
        feat = rev(cs.sb.dev)
        git(cs.sb.bare, "fetch", "-q", str(cs.sb.dev), "feature/y:feature/y")
        j = cs.st.journal()
        last_box = max([r[0] for r in j.conn.execute("SELECT id FROM outbox")], default=0)
        (cs.sb.worktree / ".git" / "index.lock").write_text("")
        out: list[str] = []
        code = on_post_receive(cs.st.config_path, "svc", [(old_master, new_master, "refs/heads/master"),
                                                          ("0" * 40, feat, "refs/heads/feature/y")], out.append)
        assert code == 1
        fails = cs.events("push.fail")
        assert [(e.data["ref"], e.data["action"], e.sha) for e in fails] == [("refs/heads/master", "deploy", new_master)]
        assert "git checkout" in fails[0].data["reason"] and any("the deploy failed" in ln for ln in out)
        # the feature branch of the same push still ran its chain (here: parked for a human)
        assert [e.data["ref"] for e in cs.events("push.received")][-2:] == ["refs/heads/master", "refs/heads/feature/y"]
        assert cs.last("review.needs-human").sha == feat
        assert [p.sha for p in approvals.pending(j)] == [feat]
        titles = [r[0] for r in j.conn.execute("SELECT title FROM outbox WHERE id > ? ORDER BY id", (last_box,))]
        assert len(titles) == 2 and "crashed" in titles[0] and "approval needed" in titles[1]  # no duplicate
    finally:
        cs.st.close()


def test_approve_that_cannot_merge_leaves_the_change_parked(cs: ChainStage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Approving while the service is frozen (or when the chain crashes before the merge landed)
    must not use the decision up: after `opskit unfreeze` the human approves it again and it merges."""
    from opskit.base.errors import OpsError
    from opskit.chain import approvals
    from opskit.chain import feature as chain
    from opskit.deploy.freeze import unfreeze

    head = cs.feature("feature/h", {"review.exit": "3\n", "app.txt": "h\n"})
    cs.push("feature/h")
    (row,) = approvals.pending(cs.st.journal())
    before = cs.tip()
    cs.st.journal().kv_set("frozen", "svc", {"reason": "earlier rollback failed", "since": "now"})
    p = cs.cli("approve", str(row.id))
    assert p.returncode == 1 and "frozen" in p.stdout + p.stderr
    parked = approvals.get(cs.st.journal(), row.id)
    assert cs.tip() == before and parked is not None and parked.status == "parked"
    unfreeze(cs.st.settings, cs.st.journal(), "svc", who="ops")

    def boom(ctx: object) -> None:
        raise OpsError("git died")

    with monkeypatch.context() as m:
        m.setattr(chain, "_still_current", boom)
        with pytest.raises(OpsError):
            chain.approve(cs.st.settings, cs.st.journal(), row.id, write=lambda _: None, by="ops")
    again = approvals.get(cs.st.journal(), row.id)
    assert again is not None and again.status == "parked" and "git died" in (again.reason or "")
    p = cs.cli("approve", str(row.id))
    assert p.returncode == 0, p.stdout + p.stderr
    assert Git(cs.sb.bare).parents(cs.tip()) == [before, head]
    done = approvals.get(cs.st.journal(), row.id)
    assert done is not None and done.status == "approved"


def test_test_and_review_get_an_allowlisted_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """test and review run code from the pushed, unreviewed branch: they must not see the webhook
    URLs and tokens in opskit's environment (redact() masks only the literal value)."""
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", "https://discord.com/api/webhooks/1/SeCrEtToKeN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "k3y")
    monkeypatch.setenv("LC_TIME", "C")
    names = "env | cut -d= -f1 | LC_ALL=C sort | tr '\\n' ' '; echo; printenv DISCORD_WEBHOOK_URL | rev; echo end"
    c = make_chain_stage(tmp_path, test=names, review=names)
    try:
        head = c.feature("feature/env", {"app.txt": "e\n"})
        c.push("feature/env")
        for what in ("test.pass", "review.pass"):
            tail = c.last(what).data["tail"]
            assert "NeKoTtErCeS" not in tail and "AWS_SECRET" not in tail and "DISCORD" not in tail, tail
            seen = set(tail.splitlines()[0].split())
            assert {"PATH", "HOME", "LC_TIME", "GIT_AUTHOR_NAME", "GIT_COMMITTER_EMAIL", "OPSKIT_HEAD",
                    "OPSKIT_RANGE", "OPSKIT_CHAIN"} <= seen, seen
            assert not {n for n in seen if n.startswith("OPSKIT_")} - {
                "OPSKIT_SERVICE", "OPSKIT_BRANCH", "OPSKIT_BASE", "OPSKIT_HEAD", "OPSKIT_RANGE", "OPSKIT_CHAIN"}
            assert "OPSKIT_STATE_DIR" not in seen and "GIT_CONFIG_NOSYSTEM" not in seen
        assert Git(c.sb.bare).parents(c.tip())[1] == head  # the chain still merged
    finally:
        c.st.close()
