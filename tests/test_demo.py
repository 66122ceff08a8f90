"""`opskit demo` (issue 3 item 6): the real command in a subprocess, its facts, its clean-up."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opskit.demo import scenario as demo
from tests.conftest import RunOpskit

FACTS = ["hooks_installed", "first_deploy_healthy", "push_showed_loop", "tested_and_reviewed", "merged_by_opskit",
         "gate_failed_refused", "tip_is_revert", "worktree_at_revert", "service_healthy", "notified", "one_chain",
         "events_in_order", "repush_quarantined", "secret_kept", "under_a_minute", "approved_by_tap", "incident_story",
         "cleaned_up"]
# The loop's shape in the timeline: the developer pushes a feature branch, opskit does the rest.
LOOP = ("push.received", "test.pass", "review.pass", "merge.complete", "deploy.complete", "health.fail",
        "rollback.start", "health.pass", "rollback.complete", "notify.sent", "lockdown.blocked")
# A real webhook in the user's environment: the demo must never post to it.
USER_WEBHOOK = "http://127.0.0.1:9/discord/111/USER-REAL-TOKEN-must-not-be-used"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for every purpose that matters here
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _user_events(state_dir: Path) -> int:
    db = state_dir / "journal.db"
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def _env(tmp_path: Path) -> dict[str, str]:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    user_cfg = tmp_path / "user" / "opskit.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text('[opskit]\nnotify = ["ops"]\n[notify.ops]\ntype = "discord"\nurl = "${DISCORD_WEBHOOK_URL}"\n')
    return {**os.environ, "TMPDIR": str(tmpdir), "OPSKIT_CONFIG": str(user_cfg),
            "DISCORD_WEBHOOK_URL": USER_WEBHOOK}


def test_demo_json_checks_the_whole_loop_and_cleans_up(tmp_path: Path, state_dir: Path, opskit: RunOpskit) -> None:
    env = _env(tmp_path)
    p = opskit("demo", "--json", env=env, cwd=tmp_path, timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    facts = {f["name"]: f for f in out["facts"]}
    assert list(facts) == FACTS, facts
    assert all(f["ok"] for f in facts.values()), [f for f in facts.values() if not f["ok"]]
    assert out["ok"] is True and out["exit_code"] == 0
    assert "Connection refused" in facts["gate_failed_refused"]["detail"]
    assert "in the bwrap sandbox" in facts["tested_and_reviewed"]["detail"]  # pushed code ran sandboxed
    # the loop's shape, in time order: nobody pushed master, opskit merged and reverted
    types = [m["type"] for m in out["timeline"] if m["type"]]
    it = iter(types)
    assert all(any(t == w for t in it) for w in LOOP), types
    ats = [m["at"] for m in out["timeline"]]
    assert ats == sorted(ats) and ats[0] == 0.0
    assert "git push origin feature/phase2-humanrail-channel" in out["timeline"][0]["what"]
    assert 0 < out["timings"]["push_to_rollback_complete"] < 60
    commits = out["commits"]
    assert set(commits) == {"good", "feature", "merge", "revert"} and len(set(commits.values())) == 4
    # one chain id from the push to the rollback, and the merge is opskit's: parents master, feature
    chain = out["chain"]
    assert chain and chain.startswith("p-") and f"chain {chain}:" in facts["one_chain"]["detail"]
    assert f"Opskit-Chain: {chain}" in facts["merged_by_opskit"]["detail"]
    assert f"first parent {commits['good'][:10]}" in facts["merged_by_opskit"]["detail"]
    assert f"second {commits['feature'][:10]}" in facts["merged_by_opskit"]["detail"]
    assert f"tree == {commits['merge'][:10]}^1" in facts["tip_is_revert"]["detail"]
    # the re-push pre-receive refuses is a feature branch carrying the merge's (quarantined) tree
    assert "pre-receive refused" in facts["repush_quarantined"]["detail"]
    assert f"the tree of {commits['merge'][:10]}, quarantined" in facts["repush_quarantined"]["detail"]
    # nothing left behind: no service process, no sandbox, nothing in the user's journal
    assert out["service_pids"] and not [pid for pid in out["service_pids"] if _alive(pid)]
    assert not Path(out["sandbox"]).exists()
    assert Path(out["sandbox"]).parent == tmp_path / "tmp" and not list((tmp_path / "tmp").iterdir())
    assert _user_events(state_dir) == 0
    # the webhook URL is a secret: no token anywhere in what the demo printed
    assert "/discord/" not in p.stdout + p.stderr and "USER-REAL-TOKEN" not in p.stdout + p.stderr


def test_ctrl_c_cleans_up_and_exits_130(tmp_path: Path, state_dir: Path) -> None:
    env = _env(tmp_path)
    # As from a terminal: a suite started in the background (`cmd &` without job control) runs
    # with SIGINT ignored, which a child inherits, and a Python started so never raises
    # KeyboardInterrupt; the child gets the default back before the demo starts.
    child = subprocess.Popen([sys.executable, "-m", "opskit", "demo"], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[str] = []
    pid: int | None = None
    try:
        assert child.stdout is not None
        for line in child.stdout:  # until the first deploy has started the service
            seen.append(line)
            if "health: probing" in line:  # the gate started: the deploy command started the service
                deadline = time.monotonic() + 5
                while pid is None and time.monotonic() < deadline:
                    pidfiles = list((tmp_path / "tmp").glob("opskit-demo-*/run/primerouter.pid"))
                    if pidfiles and pidfiles[0].read_text().strip():
                        pid = int(pidfiles[0].read_text())
                    else:
                        time.sleep(0.05)
                if pid is not None:
                    break
        assert pid is not None and _alive(pid), "".join(seen)
        child.send_signal(signal.SIGINT)
        rest, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not list((tmp_path / "tmp").iterdir())  # sandbox removed
    assert _user_events(state_dir) == 0


def test_a_loop_that_does_not_heal_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's checks can fail: a feature that stays healthy is tested, reviewed, merged and
    never reverted, and the demo says exactly which facts did not happen (exit 1), still
    cleaning up."""
    monkeypatch.setitem(demo.FEATURE_FILES, "service.mode", "healthy\n")
    result = demo.run_demo(parent=str(tmp_path))
    assert not result.ok and result.exit_code == 1
    failed = {f.name for f in result.failed}
    assert {"gate_failed_refused", "tip_is_revert", "notified", "one_chain", "events_in_order",
            "repush_quarantined", "under_a_minute"} <= failed
    assert {"hooks_installed", "first_deploy_healthy", "tested_and_reviewed", "merged_by_opskit",
            "service_healthy", "cleaned_up"}.isdisjoint(failed)
    assert result.commits["revert"] == result.commits["merge"]  # master stayed at opskit's merge
    assert not Path(result.sandbox).exists()
    assert not [pid for pid in result.service_pids if _alive(pid)]


def test_a_chain_stopped_by_its_test_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain facts can fail too: a feature whose test fails (a mode the service does not
    know) is never merged; the demo names the chain's facts as not happened (exit 1)."""
    monkeypatch.setitem(demo.FEATURE_FILES, "service.mode", "humanrail-mode\n")
    result = demo.run_demo(parent=str(tmp_path))
    assert not result.ok and result.exit_code == 1
    failed = {f.name: f.detail for f in result.failed}
    assert {"tested_and_reviewed", "merged_by_opskit", "gate_failed_refused", "tip_is_revert", "one_chain",
            "repush_quarantined"} <= set(failed)
    assert "test.fail" in failed["tested_and_reviewed"]
    assert {"hooks_installed", "first_deploy_healthy", "worktree_at_revert", "service_healthy",
            "cleaned_up"}.isdisjoint(failed)
    assert "merge" not in result.commits and result.commits["revert"] == result.commits["good"]
    assert not Path(result.sandbox).exists()
    assert not [pid for pid in result.service_pids if _alive(pid)]
