"""The deploy pipeline on real git, real pushes through installed hooks, a real service (issue 3 item 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opskit.base.errors import OpsError
from opskit.chain.routing import on_post_receive
from opskit.git.repo import Git
from opskit.views.status import collect
from opskit.wiring import hooks
from tests.support.gitsandbox import git, rev
from tests.support.pipeline import (
    Stage,
    deployed_stage_fixture,  # noqa: F401 - the `st` fixture
    env_for,
    hooked_stage,
    make_stage,
    seeded_stage,
)
from tests.support.reliability import kill_parked


def _order(types: list[str], *wanted: str) -> bool:
    """wanted appear in types in that order (other events may sit between)."""
    it = iter(types)
    return all(any(t == w for t in it) for w in wanted)


def test_good_deploy_is_gated_and_recorded(st: Stage) -> None:
    sha = st.good(files={"app.txt": "v2\n"})
    (st.sb.worktree / "hotfix.txt").write_text("edited on the server\n")  # dirty production state
    lines: list[str] = []
    r = st.deploy(lines=lines)
    assert r.ok and r.status == "healthy" and r.exit_code == 0 and r.sha == sha
    wt = Git(st.sb.worktree)
    assert wt.head() == sha and wt.current_branch() == "master"  # on the branch, not detached
    # dirty state saved to a ref, never lost, and reported
    assert r.saved_ref and r.saved_ref.startswith("refs/opskit/dirty/")
    assert "hotfix.txt" in git(st.sb.worktree, "show", "--stat", r.saved_ref).stdout
    j = st.journal()
    assert j.last_good("svc") == sha
    assert st.types()[-3:] == ["deploy.start", "deploy.complete", "health.pass"]
    start = j.last("deploy.start", "svc")
    assert start is not None and start.data["saved_ref"] == r.saved_ref and start.chain == r.chain
    assert any("saved to refs/opskit/dirty/" in ln for ln in lines)
    # nothing moved → nothing to do, and no event spam
    n = len(st.types())
    again = st.deploy()
    assert again.ok and again.status == "nothing" and len(st.types()) == n


def test_cmd_probe_runs_in_the_worktree_through_a_real_push(tmp_path: Path) -> None:
    # `service.mode` exists only in the deployed worktree: a probe run anywhere else (opskit's
    # own directory, the bare repo the hook runs in) fails, and the deploy would be reverted.
    st = hooked_stage(tmp_path, health={"url": None, "cmd": "test -f service.mode && test -f feature.txt",
                                        "window": 0.6, "period": 0.2, "startup": 1.0})
    try:
        assert not (Path.cwd() / "service.mode").exists() and not (st.sb.bare / "service.mode").exists()
        new = st.sb.commit({"feature.txt": "on\n"}, "add a feature the probe checks")
        p = st.sb.push("master", check=False)
        assert p.returncode == 0, p.stderr
        j = st.journal()
        assert j.last_good("svc") == new, p.stderr
        assert st.worktree_head() == new and st.sb.tip() == new  # not reverted
        assert _order(st.types(), "push.received", "deploy.start", "deploy.complete", "health.pass")
        assert "rollback.start" not in st.types()
        ev = j.last("health.pass", "svc")
        assert ev is not None and ev.sha == new
    finally:
        st.close()


@pytest.mark.parametrize("mode, words", [
    ("crash", "refused"),             # never starts
    ("die-after=1", "consecutive"),  # starts, then dies inside the window
    ("hang", "timed out"),            # accepts, never answers
    ("503", "503"),
])
def test_bad_service_is_reverted(tmp_path: Path, mode: str, words: str) -> None:
    # dying "inside the window" needs a window longer than its life
    st = seeded_stage(tmp_path, health={"window": 2.5} if mode.startswith("die-after") else None)
    try:
        _bad_service_is_reverted(st, mode, words)
    finally:
        st.close()


def _bad_service_is_reverted(st: Stage, mode: str, words: str) -> None:
    good = st.sb.tip()
    bad = st.good(mode=mode, message=f"service goes {mode}")
    r = st.deploy()
    assert not r.ok and r.status == "reverted" and r.exit_code == 1
    assert words in r.reason
    assert r.revert is not None and r.revert.ok
    tip = st.sb.tip()
    g = Git(st.sb.bare)
    assert tip == r.revert.revert_sha and g.parents(tip) == [bad]  # a new commit on top
    assert g.tree(tip) == g.tree(good)
    assert st.worktree_head() == tip
    assert _order(st.types(), "deploy.complete", "health.fail", "rollback.start", "rollback.complete")
    rows = {row["sha"]: row["status"] for row in st.journal().deploys("svc")}
    assert rows[bad] == "reverted" and rows[tip] == "healthy"


def test_done_when_pushed_merge_that_refuses_connections(st: Stage) -> None:
    """The issue's done-when, through real hooks: push a merge, get it reverted, re-push refused."""
    settings = st.settings
    hooks.install(settings, settings.service("svc"))
    good = st.sb.tip()
    push_out: list[str] = []
    dev = st.sb.dev
    git(dev, "checkout", "-q", "-b", "feature/bad")
    st.sb.commit({"service.mode": "crash\n", "app.txt": "v2\n"}, "make it crash")
    git(dev, "checkout", "-q", "master")
    git(dev, "merge", "-q", "--no-ff", "-m", "Merge feature/bad", "feature/bad")
    merge = rev(dev)
    p = git(dev, "push", "origin", "master", check=False)
    push_out.append(p.stderr)
    assert "remote:" in p.stderr and "health gate failed" in p.stderr, p.stderr  # the pusher saw each step
    g = Git(st.sb.bare)
    tip = st.sb.tip()
    assert tip != merge and g.is_ancestor(merge, tip)
    assert g.tree(tip) == g.tree(f"{merge}^1") == g.tree(good)
    msg = g.message(tip)
    assert msg.startswith("Auto-revert: svc: ") and f"Opskit-Reverts: {merge}" in msg
    assert "Opskit-Event: " in msg
    assert st.worktree_head() == tip and Git(st.sb.worktree).current_branch() == "master"
    # the service is healthy again
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{st.port}/health", timeout=2) as resp:
        assert resp.status == 200
    assert st.receiver is not None
    msgs = st.receiver.wait_for(1)
    assert len(msgs) == 1
    content = msgs[0].body["content"]
    assert "svc" in content and "refused" in content
    out = subprocess.run([sys.executable, "-m", "opskit", "events", "--json"], check=True, capture_output=True, text=True,
                         env={**os.environ, **env_for(st)}, timeout=30)
    types = [json.loads(ln)["type"] for ln in out.stdout.splitlines()]
    assert _order(types, "deploy.complete", "health.fail", "rollback.start", "rollback.complete")
    assert types.count("rollback.start") == 1
    # a re-push of the same bad tree is refused (quarantine)
    git(dev, "fetch", "-q", "origin")
    git(dev, "reset", "-q", "--hard", "origin/master")
    git(dev, "checkout", "-q", "-b", "feature/again", merge)
    again = git(dev, "push", "origin", "feature/again", check=False)
    assert again.returncode != 0 and "quarantine" in again.stderr.lower()


def test_deploy_command_fails_then_reverted(tmp_path: Path) -> None:
    st = seeded_stage(tmp_path, deploy="test ! -e broken || { echo 'cannot start: broken' >&2; exit 3; }; {restart}")
    try:
        st.good(files={"broken": "x\n"})
        r = st.deploy()
        assert r.status == "reverted" and "exit 3" in r.reason and "cannot start: broken" in r.reason
        ev = st.journal().last("deploy.fail", "svc")
        assert ev is not None and "cannot start: broken" in ev.data["tail"] and ev.data["exit"] == 3
        assert "health.fail" not in st.types()
        assert not (st.sb.worktree / "broken").exists()
    finally:
        st.close()


def test_deploy_command_timeout_and_background_child(tmp_path: Path) -> None:
    from opskit.base.proc import pid_alive
    from tests.support.reliability import wait_until

    bg, slow_pid = tmp_path / "bg.pids", tmp_path / "slow.pid"
    deploy = (f"sleep 20 </dev/null & echo $! >> {bg}; echo started-bg; "  # a background child holding stdout
              f"if [ -e slow ]; then echo slow; echo $$ > {slow_pid}; sleep 30; fi; {{restart}}")
    st = seeded_stage(tmp_path, deploy=deploy, extra={"deploy_timeout": 1.5})
    try:
        st.good(files={"slow": "1\n"})
        r = st.deploy()
        # times out at 1.5 s, then the revert's deploy (with its background child) passes its gate
        assert r.status == "reverted" and "timed out" in r.reason and r.revert is not None and r.revert.ok
        ev = st.journal().last("deploy.fail", "svc")
        assert ev is not None and ev.data["timed_out"] is True and "slow" in ev.data["tail"]
        # the timed-out deploy command was killed, not left running beside the revert's deploy
        wait_until(lambda: not pid_alive(int(slow_pid.read_text())), 5, "the timed-out deploy command to die")
        done = [e for e in st.journal().query(service="svc", type_prefix="deploy.complete")]
        assert done and "started-bg" in done[-1].data["tail"]
        # the deploy returned while its last background child (holding stdout) still ran
        assert pid_alive(int(bg.read_text().split()[-1]))
    finally:
        for pid in bg.read_text().split() if bg.exists() else []:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        st.close()


def test_two_deploys_at_once_are_serialized(tmp_path: Path) -> None:
    st = seeded_stage(tmp_path, deploy="sleep 0.5; {restart}")
    try:
        a = st.good(files={"a.txt": "a\n"})
        b = st.good(files={"b.txt": "b\n"})
        env = {**os.environ, **env_for(st)}
        procs = [subprocess.Popen([sys.executable, "-m", "opskit", "deploy", "svc", "--sha", s, "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for s in (a, b)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert any("held by pid" in err for _, err in outs)  # the second caller was told who holds it
        rows = [r for r in st.journal().deploys("svc") if r["sha"] in (a, b)]
        assert len(rows) == 2 and all(r["status"] == "healthy" for r in rows)
        first, second = sorted(rows, key=lambda r: r["id"])
        assert second["started"] >= first["finished"]  # one after the other, never overlapping
        assert st.types().count("deploy.complete") == 2
    finally:
        st.close()


def test_killed_mid_deploy_is_reported_and_lock_recovered(tmp_path: Path) -> None:
    parked = tmp_path / "parked.pid"
    st = seeded_stage(tmp_path, deploy=f"if [ -e slow ]; then echo $$ > {parked}; sleep 30; fi; {{restart}}")
    try:
        bad = st.good(files={"slow": "1\n"})
        env = {**os.environ, **env_for(st)}
        p = subprocess.Popen([sys.executable, "-m", "opskit", "deploy", "svc", "--sha", bad],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        j = st.journal()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            running = j.running_deploys("svc")
            # the deploy command itself is running (it wrote its pid), not only the step marked:
            # killed before that, it would start later and hold the lock through its sleep
            if running and running[0]["step"] == "deploy" and parked.exists() and parked.read_text().strip():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the deploy never reached its deploy step")
        os.killpg(p.pid, signal.SIGKILL)  # the pipeline, mid-deploy
        p.wait(10)
        # and its deploy command, in a session of its own (proc.run), as a crash of the host would
        kill_parked(parked)
        status = collect(st.settings, j)["services"][0]
        assert status["in_progress"] and not status["in_progress"]["alive"]
        good = st.sb.commit({"slow": None}, "remove slow")
        st.sb.push("master")
        lines: list[str] = []
        r = st.deploy(good, lines=lines, lock_wait=5)
        assert r.ok, lines  # within lock_wait: the dead holder's lock was recovered
        ev = [e for e in j.query(service="svc", type_prefix="deploy.fail") if e.data.get("interrupted")]
        assert len(ev) == 1 and ev[0].data["step"] == "deploy" and ev[0].data["sha"] == bad
        assert any("interrupted at step 'deploy'" in ln for ln in lines)
        assert {r["status"] for r in j.deploys("svc") if r["sha"] == bad} == {"interrupted"}
    finally:
        st.close()


def test_background_mode_returns_at_once(tmp_path: Path) -> None:
    hold = tmp_path / "hold"  # while it exists, the deploy command waits: the hook must not
    st = seeded_stage(tmp_path, extra={"background": True},
                      deploy=f"while [ -e {hold} ]; do sleep 0.05; done; {{restart}}")
    try:
        new = st.good(files={"bg.txt": "1\n"})
        old = rev(st.sb.bare, f"{new}^")
        out: list[str] = []
        hold.write_text("")
        rc = on_post_receive(st.config_path, "svc", [(old, new, "refs/heads/master")], out.append)
        # returned while the deploy command is still held: the pusher never waits for it
        assert rc == 0 and "background" in out[0]
        j = st.journal()
        assert j.last_good("svc") != new and "deploy.complete" not in st.types()
        hold.unlink()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and j.last_good("svc") != new:
            time.sleep(0.1)
        assert j.last_good("svc") == new
        log = "".join(p.read_text() for p in (st.settings.state_dir / "logs").glob("push-svc-*.log"))
        assert "✔ healthy:" in log
        assert j.last("push.received", "svc") is not None
    finally:
        st.close()


def test_feature_push_is_journaled_and_left_to_the_chain(tmp_path: Path) -> None:
    st = seeded_stage(tmp_path)
    try:
        out: list[str] = []
        git(st.sb.dev, "checkout", "-q", "-b", "feature/y")
        sha = st.sb.commit({"y.txt": "y\n"}, "feature y")
        st.sb.push("feature/y")  # no hooks installed here: the hook's work is called below
        rc = on_post_receive(st.config_path, "svc", [("0" * 40, sha, "refs/heads/feature/y")], out.append)
        ev = st.journal().last("push.received", "svc")
        assert ev is not None and ev.data["action"] == "chain"
        assert rc == 0, out
        tip = st.sb.tip()
        assert Git(st.sb.bare).parents(tip)[1:] == [sha] and st.journal().last_good("svc") == tip
        assert _order(st.types(), "push.received", "test.skipped", "review.skipped", "deploy.start", "health.pass")
    finally:
        st.close()  # the chain's deploy restarted the service: stop it


def test_git_failure_inside_deliver_is_notified_and_retried(st: Stage) -> None:
    """A leftover .git/index.lock (a killed git) makes the checkout fail: the deploy is journaled
    and notified, and its row is not a verdict — the next run deploys the commit once fixed."""
    j = st.journal()
    box = list(j.conn.execute("SELECT id FROM outbox"))
    new = st.good(files={"app.txt": "v2\n"})
    lock = st.sb.worktree / ".git" / "index.lock"
    lock.write_text("")
    with pytest.raises(OpsError):
        st.deploy()
    fail = j.last("deploy.fail", "svc")
    assert fail is not None and fail.data["crashed"] is True and fail.data["step"] == "worktree"
    assert {r["status"] for r in j.deploys("svc") if r["sha"] == new} == {"interrupted"}
    titles = [r[0] for r in j.conn.execute("SELECT title FROM outbox WHERE id > ?", (box[-1][0] if box else 0,))]
    assert len(titles) == 1 and "crashed" in titles[0]
    lock.unlink()  # the operator removes the stale lock; cron's next `opskit deploy` deploys it
    r = st.deploy()
    assert r.ok and r.status == "healthy" and r.sha == new and st.worktree_head() == new


def test_tracked_file_matching_drift_ignore_is_saved_before_checkout(tmp_path: Path) -> None:
    """drift_ignore spares untracked files; a hand edit to a TRACKED file matching it would be
    discarded by the checkout, so it is saved to refs/opskit/dirty/* like any other change."""
    st = make_stage(tmp_path, extra={"drift_ignore": ["*.local", "*.log"]})
    try:
        st.sb.commit({"settings.local": "default\n"}, "add settings")
        st.sb.push(st.sb.branch)
        assert st.deploy().ok
        (st.sb.worktree / "settings.local").write_text("hand-tuned on prod at 3am\n")
        (st.sb.worktree / "server.log").write_text("untracked and ignored\n")
        st.good(files={"app.txt": "v2\n"})
        r = st.deploy()
        assert r.ok and r.saved_ref and r.saved_ref.startswith("refs/opskit/dirty/")
        assert git(st.sb.worktree, "show", f"{r.saved_ref}:settings.local").stdout == "hand-tuned on prod at 3am\n"
        assert (st.sb.worktree / "settings.local").read_text() == "default\n"  # the deploy put the commit's back
        assert (st.sb.worktree / "server.log").exists()  # untracked ignored files are left alone
        # only ignored untracked files: nothing to save
        st.good(files={"app.txt": "v3\n"})
        assert st.deploy().saved_ref is None
    finally:
        st.close()


def test_killed_deploy_keeps_the_lock_until_its_orphaned_command_exits(tmp_path: Path) -> None:
    """`opskit deploy` is SIGKILLed (OOM killer, a timeout) while its deploy command runs: that
    command, in a session of its own, goes on. The next deploy must wait for it — not run a
    second deploy command beside it — while a daemon it started in the background does not
    hold the lock (the service it starts would otherwise block every later deploy)."""
    from opskit.base.proc import pid_alive
    from tests.support.reliability import kill_group, spawn_opskit, wait_until

    marks, bg = tmp_path / "marks", tmp_path / "bg.pids"
    st = seeded_stage(tmp_path, deploy=(
        f'echo "start $OPSKIT_SHA" >> {marks}; '
        f"if [ -e slow ]; then sleep 30 >/dev/null 2>&1 & echo $! >> {bg}; sleep 2; fi; "
        f'echo "end $OPSKIT_SHA" >> {marks}; {{restart}}'))
    try:
        marks.write_text("")
        slow = st.good(files={"slow": "1\n"})
        p = spawn_opskit(["deploy", "svc"], env_for(st))
        wait_until(lambda: f"start {slow}" in marks.read_text(), 20, "the deploy command to start")
        kill_group(p.pid)  # opskit dies; its deploy command is orphaned mid-way
        p.wait(10)
        busy = subprocess.run([sys.executable, "-m", "opskit", "deploy", "svc", "--lock-wait", "0"], check=False,
                              capture_output=True, text=True, env={**os.environ, **env_for(st)}, timeout=60)
        assert busy.returncode == 1 and "held by pid" in busy.stdout + busy.stderr, busy
        fixed = st.sb.commit({"slow": None}, "not slow")
        st.sb.push("master")
        lines: list[str] = []
        r = st.deploy(lock_wait=20, lines=lines)
        assert r.ok and r.sha == fixed, lines
        assert [ln.split()[0] + " " + ln.split()[1] for ln in marks.read_text().splitlines()] == [
            f"start {slow}", f"end {slow}", f"start {fixed}", f"end {fixed}"]  # one after the other
        assert any("interrupted at step 'deploy'" in ln for ln in lines)
        daemon = int(bg.read_text().split()[0])
        assert pid_alive(daemon)  # still running, yet the lock was free once the command itself ended
    finally:
        for pid in (bg.read_text().split() if bg.exists() else []):
            kill_group(int(pid))
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        st.close()
