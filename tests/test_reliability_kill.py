"""Kill at every step (issue 6): a real `opskit deploy` is SIGKILLed at each step of a bad
deploy in turn — the deploy command, the gate, the revert commit, the landing (update-ref),
the redeploy of the revert — and the next run must report what was interrupted, get the
lock at once, and leave repo, worktree and journal telling one consistent story.

How each stop is made precise: see tests/support/reliability.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opskit.base.lock import is_held
from opskit.git.repo import Git
from tests.support.gitsandbox import git
from tests.support.pipeline import Stage, env_for, seeded_stage
from tests.support.reliability import (
    block_deploy_cmd,
    blocking_git,
    kill_group,
    kill_parked,
    spawn_opskit,
    wait_until,
)


@dataclass
class Kit:
    st: Stage
    flags: Path
    bin_dir: Path
    good: str
    bad: str


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    flags = tmp_path / "flags"
    flags.mkdir()
    # A gate that fails in 1 s keeps five kills plus their recoveries well under a minute.
    st = seeded_stage(tmp_path, deploy=block_deploy_cmd(flags), health={"startup": 1.0, "window": 0.5})
    try:
        good = st.sb.tip()
        bad = st.good(mode="crash", message="service goes crash")  # pushed; no hooks: nothing ran yet
        yield Kit(st=st, flags=flags, bin_dir=tmp_path / "bin", good=good, bad=bad)
    finally:
        st.close()


def _running_step(kit: Kit, step: str, sha: str | None = None) -> bool:
    rows = kit.st.journal().running_deploys("svc")
    return any(r["step"] == step and (sha is None or r["sha"] == sha) for r in rows)


STEPS = ["deploy", "gate", "revert-commit", "landing", "redeploy"]


def _arm(kit: Kit, step: str) -> tuple[dict[str, str], Path, Callable[[], object]]:
    env = env_for(kit.st)
    marker = kit.flags / "at-deploy"
    if step == "deploy":
        (kit.flags / f"sha-{kit.bad}").touch()
        return env, marker, marker.exists
    if step == "gate":
        return env, marker, lambda: _running_step(kit, "health", kit.bad)
    if step in ("revert-commit", "landing"):
        blocking_git(kit.bin_dir)
        marker = kit.flags / "at-git"
        env.update({"PATH": f"{kit.bin_dir}:{os.environ['PATH']}", "OPSKIT_REL_MARK": str(marker),
                    "OPSKIT_REL_BLOCK": "commit-tree" if step == "revert-commit" else "update-ref"})
        return env, marker, marker.exists
    assert step == "redeploy"
    (kit.flags / f"prev-{kit.bad}").touch()
    return env, marker, marker.exists



def _consistent(kit: Kit) -> tuple[str, str]:
    """Repo and worktree after the kill: tip is the bad commit or a complete revert of it,
    nothing lost, nothing half-done in the worktree. Returns (tip, worktree head)."""
    bare = Git(kit.st.sb.bare)
    tip = kit.st.sb.tip()
    assert bare.is_ancestor(kit.bad, tip)  # no lost commit, history not rewritten
    if tip != kit.bad:
        assert bare.parents(tip) == [kit.bad]
        assert bare.tree(tip) == bare.tree(kit.good)
        assert bare.message(tip).startswith("Auto-revert: svc: ")
    wt = Git(kit.st.sb.worktree)
    head = wt.head()
    assert head in (kit.bad, tip), (head, tip)
    assert wt.current_branch() == "master"
    assert wt.status() == [], wt.status()  # no half-made checkout or revert in the worktree
    left = git(kit.st.sb.bare, "worktree", "list", "--porcelain").stdout.count("worktree ")
    assert left == 1  # no throwaway revert worktree left behind
    assert not is_held(kit.st.settings.state_dir, "svc")  # the kernel dropped the dead holder's lock
    return tip, head


@pytest.mark.parametrize("step", STEPS)
def test_pipeline_killed_at_each_step(kit: Kit, step: str) -> None:
    env, marker, reached = _arm(kit, step)
    p = spawn_opskit(["deploy", "svc", "--sha", kit.bad], env)
    try:
        wait_until(reached, 30, f"the pipeline to reach step {step!r}")
    finally:
        kill_group(p.pid)
        p.wait(10)
        kill_parked(marker)
    tip, head = _consistent(kit)
    j = kit.st.journal()
    events_before = j.query(service="svc")
    expect_tip = kit.bad if step in ("deploy", "gate", "revert-commit") else tip
    assert tip == expect_tip and (tip != kit.bad) == (step in ("landing", "redeploy"))

    # The next run: what cron (or a human) does — `opskit deploy svc`, no SHA.
    for f in kit.flags.glob("sha-*"):
        f.unlink()
    for f in kit.flags.glob("prev-*"):
        f.unlink()
    # --lock-wait 0: the dead holder's lock must be free at once, not after a wait
    nxt = spawn_opskit(["deploy", "svc", "--json", "--lock-wait", "0"], env_for(kit.st))
    out, err = nxt.communicate(timeout=60)
    result = json.loads(out)
    new = [e for e in j.query(service="svc") if e.id > events_before[-1].id]
    reported = [e for e in new if e.data.get("interrupted")]
    # A kill during the revert's redeploy interrupts two things: the revert's deploy and the
    # rollback it was part of (left open at rollback.start); each is reported once.
    kinds = {"deploy": ["deploy.fail"], "gate": ["deploy.fail"],
             "redeploy": ["deploy.fail", "rollback.fail"]}.get(step, ["rollback.fail"])
    assert [e.type for e in reported] == kinds, \
        f"the next run did not report the interrupted {step}: {[e.type for e in new]}\n{err}"
    assert all("interrupted" in e.data["reason"] for e in reported)
    if kinds[0] == "deploy.fail":
        assert reported[0].data["step"] == {"gate": "health"}.get(step, "deploy")
    for e in reported[1:]:  # the rollback is closed in its own chain, saying the revert had landed
        assert e.data["bad"] == kit.bad and e.data["landed"] is True and e.data["tip"] == tip
        assert e.chain == next(x for x in events_before if x.type == "rollback.start").chain
        titles = [r[0] for r in j.conn.execute("SELECT title FROM outbox WHERE event_id = ?", (e.id,))]
        assert titles == ["svc: rollback interrupted"]
    rollback = [e.type for e in j.query(service="svc", type_prefix="rollback.")]
    assert rollback.count("rollback.start") == rollback.count("rollback.complete") + rollback.count("rollback.fail")
    # Consistent, and the journal says which commit the service is on.
    final_tip, final_head = _consistent(kit)
    assert final_head == final_tip
    assert j.running_deploys("svc") == []
    last = j.deploys("svc", limit=1)[0]
    assert last["sha"] == final_head and last["status"] == "healthy", dict(last)
    bare = Git(kit.st.sb.bare)
    assert bare.tree(final_tip) == bare.tree(kit.good)  # the bad code is gone from the branch and the host
    if tip == kit.bad:  # the revert never landed: the next run deploys the bad tip again and reverts it
        assert (nxt.returncode, result["status"]) == (1, "reverted"), (out, err)
        assert len([c for c in bare.rev_list(f"{kit.bad}..{final_tip}")]) == 1  # one revert, not two
    else:  # the revert landed: the next run deploys it
        assert (nxt.returncode, result["status"], result["sha"]) == (0, "healthy", tip), (out, err)
    # A further run finds nothing to do: the report was made once.
    again = spawn_opskit(["deploy", "svc", "--json"], env_for(kit.st))
    a_out, a_err = again.communicate(timeout=60)
    assert again.returncode == 0 and json.loads(a_out)["status"] == "nothing", (a_out, a_err)
