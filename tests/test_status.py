"""opskit status: the sections other areas add (drift, broken channels, cron-check's own health)."""

from __future__ import annotations

import json

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
    assert r.returncode == 0, r.stderr
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
    assert r.returncode == 0, r.stderr
    assert "CRON-CHECK IS NOT RUNNING" in r.stdout
