"""opskit status: the sections other areas add (drift, broken channels, cron-check's own health)."""

from __future__ import annotations

import json
import subprocess
import sys

from opskit.storage.journal import Journal


def test_status_shows_drift_broken_channel_and_silent_cron_check(opskit, write_config, sandbox, state_dir) -> None:
    cfg = write_config(
        f'[notify.ops]\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook"\n'
        f'[service.web]\nrepo = "{sandbox.bare}"\nworktree = "{sandbox.worktree}"\n'
    )
    j = Journal(state_dir)
    j.kv_set("drift", "web", {"fingerprint": "x", "since": "2026-04-26T03:00:00Z", "count": 2})
    j.kv_set("channel", "ops", {"broken": True, "status": 404, "error": "HTTP 404", "since": "2026-04-26T03:01:00Z"})
    r = opskit("--config", str(cfg), "status")
    assert r.returncode == 1, r.stderr  # a broken channel needs attention; drift is drift-scan's to report
    assert r.stdout.endswith("needs attention:\n  - channel ops is broken: its notifications go to its "
                             "fallback or wait\n")
    assert "2 finding(s) since 2026-04-26T03:00:00Z" in r.stdout
    assert "channel ops is BROKEN" in r.stdout and "HTTP 404" in r.stdout
    assert "cron-check has never run" in r.stdout
    assert "127.0.0.1:9" not in r.stdout  # the channel URL is a secret
    data = json.loads(opskit("--config", str(cfg), "status", "--json").stdout)
    assert data["services"][0]["drift"].startswith("2 finding(s)")
    assert set(data["broken_channels"]) == {"ops"}
    assert "never run" in data["cron_check"]["message"]


def test_status_says_loudly_when_cron_check_stopped(opskit, write_config, sandbox, state_dir) -> None:
    cfg = write_config(f'[service.web]\nrepo = "{sandbox.bare}"\nworktree = "{sandbox.worktree}"\n')
    Journal(state_dir).kv_set("cron-check", "last", {"ts": "2020-01-01T00:00:00Z"})
    r = opskit("--config", str(cfg), "status")
    assert r.returncode == 1, r.stderr
    assert "CRON-CHECK IS NOT RUNNING" in r.stdout
    assert "  - cron-check is not running: nothing watches the jobs" in r.stdout


def test_status_exits_1_while_a_deploy_is_interrupted_or_failed_or_frozen(opskit, write_config, sandbox,
                                                                       state_dir) -> None:
    cfg = write_config(f'[service.web]\nrepo = "{sandbox.bare}"\nworktree = "{sandbox.worktree}"\n')
    r = opskit("--config", str(cfg), "status")
    assert (r.returncode, r.stdout.splitlines()[-1]) == (0, "needs attention: nothing"), r.stdout + r.stderr
    sha = "a" * 40
    # a pipeline that started a deploy and died (SIGKILL, OOM, power): its row stays running
    code = ("import sys; from pathlib import Path; from opskit.storage.journal import Journal; "
            f"print(Journal(Path(sys.argv[1])).deploy_start('web', '{sha}', previous=None, chain=None))")
    dead = subprocess.run([sys.executable, "-c", code, str(state_dir)], capture_output=True, text=True,
                          check=True, timeout=60)
    r = opskit("--config", str(cfg), "status", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["attention"] == [
        "web: a deploy of aaaaaaaaaa was interrupted at step start (the next cron-check or "
        "`opskit deploy web` finishes it)"]
    j = Journal(state_dir)
    j.deploy_finish(int(dead.stdout), "failed", "no healthy probe within 2s startup")
    r = opskit("--config", str(cfg), "status", "--json")
    assert (r.returncode, json.loads(r.stdout)["attention"]) == (
        1, ["web: the last deploy failed (aaaaaaaaaa): no healthy probe within 2s startup"])
    j.deploy_finish(j.deploy_start("web", sha, previous=None, chain=None), "healthy", "healthy for 3s")
    j.kv_set("frozen", "web", {"reason": "by hand", "since": "2026-12-02T00:00:00Z"})
    r = opskit("--config", str(cfg), "status")
    assert r.returncode == 1
    assert r.stdout.endswith("needs attention:\n  - web: frozen, deploys refused (opskit unfreeze web)\n")
    j.kv_set("frozen", "web", None)
    assert opskit("--config", str(cfg), "status").returncode == 0


def test_records_left_outside_the_journal_need_attention() -> None:
    from opskit.views.status import attention

    base = {"services": [], "broken_channels": {}, "cron_check": {"message": "cron-check ran 2026-12-02"}}
    assert attention({**base, "fallback_pending": 0}) == []
    assert attention({**base, "fallback_pending": 3}) == [
        "3 record(s) wait in the fallback log, outside the journal (journaled by the next command that "
        "can write it; `opskit doctor` checks the journal)"]
