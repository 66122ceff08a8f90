"""The pipeline outlives its pusher: a `git push` made from a terminal-like session (its own
session and process group, as a shell's job is) is sent SIGINT (Ctrl-C), SIGHUP (the terminal
or SSH session closed) or SIGTERM during the gate, the revert, or the revert's redeploy. Nobody
runs anything afterwards; the push's pipeline must still end reverted, healthy and notified
(a bad commit) or deployed and gated (a good one), with nothing left running.

Stopping points: the gate is found from the deploys row's step; the revert and the redeploy are
slowed (not parked) by the canonical repo's reference-transaction hook and a deploy command that sleep a moment and leave a marker.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opskit.base import proc
from opskit.chain.routing import on_post_receive
from opskit.git.repo import Git
from tests.support.gitsandbox import rev
from tests.support.pipeline import Stage, hooked_stage, seeded_stage
from tests.support.reliability import REAL_GIT, wait_until

SLOW = 1.5  # seconds each slowed step lasts: long enough to land a signal in it

# git prepends its exec-path to a hook's PATH, so a `git` wrapper on PATH would not be seen by
# the pipeline a hook starts. The canonical repo's reference-transaction hook is: the revert's
# landing moves the branch off the bad commit, and this makes that landing take a moment.
_SLOW_LANDING = """#!/bin/sh
[ "$1" = prepared ] || { cat >/dev/null; exit 0; }
while read -r old new ref; do
  if [ "$old" = "$OPSKIT_BAD" ]; then touch {mark}; sleep {slow}; fi
done
exit 0
"""


def _slow_deploy(flags: Path) -> str:
    """The revert's redeploy (OPSKIT_PREVIOUS is the bad commit) leaves a marker and takes a moment."""
    d = shlex.quote(str(flags))
    return f'if [ -e {d}/prev-"$OPSKIT_PREVIOUS" ]; then touch {d}/at-redeploy; sleep {SLOW}; fi; {{restart}}'


@dataclass
class Push:
    st: Stage
    flags: Path

    def commit(self, mode: str) -> str:
        return self.st.sb.commit({"service.mode": mode + "\n", "app.txt": f"{mode}\n"}, f"service goes {mode}")

    def push(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`git push` as typed in a terminal: its own session, so a signal to its group is what
        the terminal (Ctrl-C, hang-up) or a `kill -TERM -PGID` would send."""
        return subprocess.Popen([REAL_GIT, "push", "origin", self.st.sb.branch], cwd=self.st.sb.dev,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                env={**os.environ, **(env or {})})

    def running(self, step: str, sha: str) -> bool:
        return any(r["step"] == step and r["sha"] == sha for r in self.st.journal().running_deploys("svc"))

    def settled(self) -> bool:
        """The worker ended (its recorder wrote the status) and nothing is left running."""
        logs = self.st.settings.state_dir / "logs"
        return any(logs.glob("push-svc-*.status")) and self.st.journal().running_deploys("svc") == []


@pytest.fixture
def px(tmp_path: Path) -> Iterator[Push]:
    flags = tmp_path / "flags"
    flags.mkdir()
    st = hooked_stage(tmp_path, deploy=_slow_deploy(flags), health={"startup": 1.0, "window": 0.5})
    try:
        yield Push(st=st, flags=flags)
    finally:
        st.close()


def _healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
        return bool(resp.status == 200)


def _hit(p: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
    try:
        p.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # the pusher's side must go away like a closed terminal
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=10)


SIGNALS = [signal.SIGINT, signal.SIGHUP, signal.SIGTERM]


@pytest.mark.parametrize("step", ["gate", "revert", "redeploy"])
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_bad_push_is_reverted_after_the_pusher_leaves(px: Push, sig: signal.Signals, step: str) -> None:
    st = px.st
    good = st.sb.tip()
    bad = px.commit("crash")
    if step == "revert":
        hook = st.sb.bare / "hooks" / "reference-transaction"
        hook.write_text(_SLOW_LANDING.replace("{mark}", shlex.quote(str(px.flags / "at-revert")))
                        .replace("{slow}", str(SLOW)).replace("$OPSKIT_BAD", bad))
        hook.chmod(0o755)
        reached = (px.flags / "at-revert").exists
    elif step == "redeploy":
        (px.flags / f"prev-{bad}").touch()
        reached = (px.flags / "at-redeploy").exists
    else:
        def reached() -> bool:
            return px.running("health", bad)
    p = px.push()
    try:
        wait_until(reached, 30, f"the pipeline to reach the {step}")
    finally:
        _hit(p, sig)
    assert st.receiver is not None
    # Nobody runs anything from here on: the detached pipeline finishes on its own.
    wait_until(px.settled, 60, "the detached pipeline to finish")
    bare = Git(st.sb.bare)
    tip = st.sb.tip()
    assert tip != bad and bare.parents(tip) == [bad] and bare.tree(tip) == bare.tree(good)
    assert st.worktree_head() == tip
    assert _healthy(st.port)
    types = st.types()
    assert types.count("rollback.start") == types.count("rollback.complete") == 1, types
    assert not [e for e in st.journal().query(service="svc") if e.data.get("interrupted")], \
        "the pusher leaving must not interrupt the pipeline"
    last = st.journal().deploys("svc", limit=1)[0]
    assert (last["sha"], last["status"]) == (tip, "healthy")
    msgs = st.receiver.wait_for(1, timeout=15)
    assert any("svc" in m.body.get("content", "") for m in msgs)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_good_push_is_deployed_and_gated_after_the_pusher_leaves(px: Push, sig: signal.Signals) -> None:
    st = px.st
    good = px.commit("healthy")
    p = px.push()
    try:
        wait_until(lambda: px.running("health", good), 30, "the gate of the good commit")
    finally:
        _hit(p, sig)
    wait_until(px.settled, 60, "the detached pipeline to finish")
    assert st.sb.tip() == good and st.worktree_head() == good
    assert st.journal().last_good("svc") == good
    passed = st.journal().last("health.pass", "svc")
    assert passed is not None and passed.sha == good
    assert "rollback.start" not in st.types()


def test_pusher_who_stays_sees_the_outcome_and_its_exit_code(px: Push) -> None:
    px.commit("crash")
    p = px.push()
    _, err = p.communicate(timeout=60)
    text = err.decode()
    assert "remote:" in text and "health gate failed" in text and "svc: reverted" in text, text
    assert px.settled()


def test_streamed_output_is_capped_and_says_how_much(tmp_path: Path) -> None:
    """A deploy command that prints 5000 lines: the pusher gets the cap and one line saying
    how much was cut; the exit code still says how it ended; the log keeps everything."""
    st = seeded_stage(tmp_path, deploy="seq 1 5000; {restart}")
    try:
        new = st.good(files={"x.txt": "1\n"})
        old = rev(st.sb.bare, f"{new}^")
        out: list[str] = []
        rc = on_post_receive(st.config_path, "svc", [(old, new, "refs/heads/master")], out.append)
        assert rc == 0, out[-5:]
        cut = [ln for ln in out if "not shown here" in ln]
        assert len(cut) == 1 and len(out) <= 2001 + 1, len(out)
        n = int(cut[0].split("… ")[1].split(" ")[0])
        assert n > 2900
        logs = list((st.settings.state_dir / "logs").glob("push-svc-*.log"))
        assert len(logs) == 1 and "  | 5000" in logs[0].read_text() and str(logs[0]) in cut[0]
        bad = st.good(mode="crash", message="crash")
        rc = on_post_receive(st.config_path, "svc", [(new, bad, "refs/heads/master")], [].append)
        assert rc == 1  # reverted: the check failed, as an inline deploy said it
    finally:
        st.close()


def test_follow_stops_when_the_listener_hangs_up(tmp_path: Path) -> None:
    """Writing to a pusher who left fails: following stops at once; the work goes on and records its end."""
    from opskit.base import detach

    log, status = tmp_path / "w.log", tmp_path / "w.status"
    flag = tmp_path / "go"
    pid = detach.spawn_recorded(["/bin/sh", "-c", f'echo one; while [ ! -e {shlex.quote(str(flag))} ]; do '
                                 'sleep 0.05; done; echo two; exit 3'], log=log, status=status)
    seen: list[str] = []

    def write(line: str) -> None:
        seen.append(line)
        raise BrokenPipeError

    got = detach.follow(pid, log, status, write, poll=0.02)
    assert got.listener_gone and not got.finished and seen == ["one"]
    flag.touch()
    wait_until(lambda: detach.read_status(status) is not None, 10, "the work to end")
    assert detach.read_status(status) == 3 and "two" in log.read_text()


@pytest.mark.parametrize("mode", ["crash", "healthy"])
def test_pipeline_killed_mid_gate_is_finished_by_the_next_cron_check(px: Push, mode: str) -> None:
    """SIGKILL of the pipeline itself (the OOM killer, kill -9): nothing can run in it any more.
    `status` shows it interrupted meanwhile; the next cron-check finishes it (a bad commit is
    reverted, a good one gated again) and tells the owner; the one after finds nothing."""
    from opskit.jobs.cron_check import cron_check
    from opskit.views.status import collect, render

    st = px.st
    good = st.sb.tip()
    sha = px.commit(mode)
    p = px.push()
    try:
        wait_until(lambda: px.running("health", sha), 30, "the gate")
        pid = int(st.journal().running_deploys("svc")[0]["pid"])
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not proc.pid_alive(pid), 10, "the pipeline to die")
    finally:
        p.communicate(timeout=30)
    assert p.returncode == 0  # post-receive's exit code does not fail a push
    shown = "\n".join(render(collect(st.settings, st.journal())))
    assert "at step health" in shown and "interrupted" in shown and "cron-check" in shown, shown
    assert st.receiver is not None
    before = len(st.receiver.messages)
    report = cron_check(st.settings, st.journal(), crontab_text=None)
    assert [(u.service, u.error) for u in report.unfinished] == [("svc", None)], report.unfinished
    assert "died at step 'health'" in report.unfinished[0].found
    bare = Git(st.sb.bare)
    tip = st.sb.tip()
    j = st.journal()
    assert j.running_deploys("svc") == []
    assert [e.data["step"] for e in j.query(service="svc", type_prefix="deploy.fail") if e.data.get("interrupted")] \
        == ["health"]
    if mode == "crash":
        assert report.unfinished[0].status == "reverted"
        assert bare.parents(tip) == [sha] and bare.tree(tip) == bare.tree(good) and st.worktree_head() == tip
        assert _healthy(st.port)
    else:
        assert report.unfinished[0].status == "healthy" and tip == sha and j.last_good("svc") == sha
    msgs = st.receiver.wait_for(before + 1, timeout=15)
    assert any("cron-check found" in m.body.get("content", "") for m in msgs[before:])
    assert cron_check(st.settings, st.journal(), crontab_text=None).unfinished == []


def test_sigterm_to_the_pipeline_is_finished_by_cron_check(px: Push) -> None:
    """SIGTERM on purpose (shutdown) interrupts the pipeline and leaves the journal consistent;
    in push mode nothing else looks again, so cron-check reverts it."""
    from opskit.jobs.cron_check import cron_check

    st = px.st
    bad = px.commit("crash")
    p = px.push()
    try:
        wait_until(lambda: px.running("health", bad), 30, "the gate")
        os.kill(int(st.journal().running_deploys("svc")[0]["pid"]), signal.SIGTERM)
    finally:
        p.communicate(timeout=30)
    wait_until(px.settled, 30, "the pipeline to stop")
    j = st.journal()
    assert j.deploys("svc", limit=1)[0]["status"] == "interrupted"
    report = cron_check(st.settings, j, crontab_text=None)
    assert [u.status for u in report.unfinished] == ["reverted"]
    assert Git(st.sb.bare).parents(st.sb.tip()) == [bad] and _healthy(st.port)
