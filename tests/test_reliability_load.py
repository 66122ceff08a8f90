"""Load (issue 6): 20 pushes in flight at once through the installed hooks of one service,
and 8 processes × 1,000 journal writes.

The pushes: git itself takes one ref update at a time (a push whose old value moved is
refused), so the 20 commits form a line and each `git push` starts as soon as the previous
one's ref update landed — without waiting for its post-receive. All 20 post-receive
pipelines then contend for the service's deploy lock at once.

What the pipeline does with a push that waited while a newer tip arrived: it does NOT deploy
its older commit over the newer one (that would put the service back in time, in a random
order); it journals `push.superseded` naming the newer tip and answers the pusher; the push
that brought the newest tip deploys it.
"""

from __future__ import annotations

import multiprocessing
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.git.repo import Git
from opskit.storage.journal import Journal
from tests.support.gitsandbox import git
from tests.support.pipeline import Stage, hooked_stage
from tests.support.reliability import Timer, wait_until

PUSHES = 20


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[Stage]:
    st = hooked_stage(tmp_path, health={"window": 0.3, "period": 0.1, "startup": 2.0})
    try:
        yield st
    finally:
        st.close()


def test_twenty_pushes_at_once_are_answered_serialized_and_none_lost(hooked: Stage) -> None:
    st = hooked
    base = st.sb.tip()
    shas = [st.sb.commit({f"load/{i:02d}.txt": f"{i}\n"}, f"load {i:02d}") for i in range(PUSHES)]
    pushes: list[subprocess.Popen[str]] = []
    with Timer() as t:
        for sha in shas:
            # By path, not `origin`: 20 clients updating one remote-tracking ref would race.
            pushes.append(subprocess.Popen(["git", "push", "-q", str(st.sb.bare), f"{sha}:refs/heads/master"],
                                           cwd=st.sb.dev, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True, errors="replace"))
            wait_until(lambda s=sha: st.sb.tip() == s, 30, f"the push of {sha[:10]} to land")  # type: ignore[misc]
        outs = [p.communicate(timeout=120) for p in pushes]
    print(f"\n20 pushes answered in {t.took:.1f}s")
    # Every push answered, with a verdict the pusher can read.
    for p, (_, err) in zip(pushes, outs, strict=True):
        assert p.returncode == 0, err
        assert "svc: healthy:" in err or "svc: superseded:" in err, err
    j = st.journal()
    # Each push journaled, once.
    received = [e for e in j.query(service="svc", type_prefix="push.received")]
    assert sorted(e.data["new"] for e in received) == sorted(shas)
    assert [e.data["old"] for e in sorted(received, key=lambda e: shas.index(e.data["new"]))] == [base, *shas[:-1]]
    # None lost: each sha deployed healthy, or superseded by a newer one (its descendant).
    rows = sorted((r for r in j.deploys("svc", limit=100) if r["chain"] != "seed"), key=lambda r: r["id"])
    deployed = [r["sha"] for r in rows]
    assert all(r["status"] == "healthy" for r in rows), [dict(r) for r in rows]
    superseded = {e.sha: e for e in j.query(service="svc", type_prefix="push.superseded")}
    bare = Git(st.sb.bare)
    for sha in shas:
        assert (sha in deployed) != (sha in superseded), sha  # exactly one fate
        if sha in superseded:
            by = superseded[sha].data["by"]
            assert by != sha and bare.is_ancestor(sha, by)
    # Never back in time: deploys go forward along the branch, and the newest is live.
    assert deployed == sorted(deployed, key=shas.index) and deployed[-1] == shas[-1]
    print(f"{len(deployed)} deploys, {len(superseded)} pushes superseded")
    assert st.worktree_head() == shas[-1] and j.last_good("svc") == shas[-1]
    # Serialized: one deploy's events never interleave with another's, and rows never overlap.
    seq = [e.data.get("deploy_id") for e in j.query(service="svc")
           if e.type.startswith(("deploy.", "health.")) and e.data.get("deploy_id")]
    blocks = [d for i, d in enumerate(seq) if i == 0 or seq[i - 1] != d]
    assert len(blocks) == len(set(blocks)) == len(rows), seq
    for a, b in zip(rows, rows[1:], strict=False):
        assert a["finished"] is not None and b["started"] >= a["finished"]
    git(st.sb.dev, "fetch", "-q", "origin")  # the dev clone is still usable afterwards


def _writer(state_dir: str, n: int, who: int) -> None:
    j = Journal(Path(state_dir))
    for i in range(n):
        j.append("load.write", f"w{who}", {"i": i})


def test_eight_processes_write_a_thousand_events_each(state_dir: Path) -> None:
    Journal(state_dir)  # the schema first, as any real command does
    ctx = multiprocessing.get_context("fork")  # no re-import per child: the writes are what is timed
    procs = [ctx.Process(target=_writer, args=(str(state_dir), 1000, w)) for w in range(8)]
    with Timer() as t:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    print(f"\n8 x 1000 journal appends in {t.took:.2f}s ({8000 / t.took:.0f}/s)")
    events = Journal(state_dir).query(type_prefix="load.")
    assert len(events) == 8000 and len({e.id for e in events}) == 8000
    for w in range(8):  # each writer's events in its own order, none lost
        assert [e.data["i"] for e in events if e.service == f"w{w}"] == list(range(1000))
