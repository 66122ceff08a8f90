"""`opskit add` adopts the HEAD a service runs as deployed: `deploy.adopted` and a deploys row,
so status shows it deployed and the hourly drift-scan is clean until something really changes.
Runs as whoever runs the tests (the worktree's owner): no push account, no root needed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from opskit.storage.journal import Journal
from tests.conftest import RunOpskit
from tests.support.gitsandbox import git, rev
from tests.support.hooks import toml_str


def _running_checkout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A service's checkout with history, not under opskit yet; an opskit.toml without it."""
    wt = tmp_path / "srv" / "app"
    wt.mkdir(parents=True)
    git(wt, "init", "-q", "-b", "master")
    for n in (1, 2):
        (wt / "app.txt").write_text(f"v{n}\n")
        git(wt, "add", "app.txt")
        git(wt, "commit", "-q", "-m", f"v{n}")
    state = tmp_path / "state"
    cfg = tmp_path / "conf" / "opskit.toml"
    cfg.parent.mkdir()
    cfg.write_text(f"# the operator's own comment\n[opskit]\nstate_dir = {toml_str(state)}\n")
    return wt, state, cfg


def _add(opskit: RunOpskit, cfg: Path, wt: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return opskit("--config", str(cfg), "add", "app", "--worktree", str(wt), "--deploy", "true",
                  "--health-url", "http://127.0.0.1:9/health", "--repo", str(tmp_path / "git" / "app.git"),
                  "--host", "example.invalid", *extra)


def _adopted(state: Path) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    j = Journal(state)
    try:
        events = [e.to_dict() for e in j.query(type_prefix="deploy.")]
        rows = [dict(r) for r in j.deploys("app")]
    finally:
        j.close()
    return events, rows


def test_add_adopts_the_running_head_and_drift_scan_is_clean(opskit: RunOpskit, tmp_path: Path) -> None:
    wt, state, cfg = _running_checkout(tmp_path)
    head = rev(wt)
    r = _add(opskit, cfg, wt, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"adopt HEAD {head[:12]} of {wt} as deployed on master\n" in r.stdout
    events, rows = _adopted(state)
    assert [(e["type"], e["service"], e["commit"], e["data"]) for e in events] == [
        ("deploy.adopted", "app", head, {"sha": head, "branch": "master", "worktree": str(wt),
                                         "deploy_id": rows[0]["id"]})]
    assert [(x["sha"], x["kind"], x["status"], x["previous"]) for x in rows] == [(head, "adopt", "healthy", None)]

    scan = opskit("--config", str(cfg), "drift-scan", "--no-notify")
    assert (scan.returncode, scan.stdout) == (0, "app: clean\n"), scan.stdout + scan.stderr
    status = opskit("--config", str(cfg), "status", "--json")
    svc = json.loads(status.stdout)["services"][0]
    assert svc["deployed"]["sha"] == head and svc["last_good"] == head
    assert (svc["last_verdict"]["kind"], svc["last_verdict"]["status"], svc["last_verdict"]["sha"]) == (
        "adopt", "healthy", head)

    # Idempotent: a second add journals nothing and adds no row.
    again = _add(opskit, cfg, wt, tmp_path)
    assert again.returncode == 0 and "unchanged: deploy record of app\n" in again.stdout, again.stdout
    assert "nothing changed" in again.stdout
    assert _adopted(state) == (events, rows)

    # Until something really changes: a commit made by hand in production is drift.
    (wt / "app.txt").write_text("hot fix\n")
    git(wt, "commit", "-q", "-am", "hot fix on the server", "--no-verify")
    scan = opskit("--config", str(cfg), "drift-scan", "--no-notify")
    assert scan.returncode == 1 and "bypass" in scan.stdout and "hot fix on the server" in scan.stdout, scan.stdout


def test_add_dry_run_writes_no_journal(opskit: RunOpskit, tmp_path: Path) -> None:
    wt, state, cfg = _running_checkout(tmp_path)
    before = cfg.read_bytes()
    r = _add(opskit, cfg, wt, tmp_path, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"would: adopt HEAD {rev(wt)[:12]} of {wt} as deployed on master (unless the journal records a "
            "deploy of app already)\n") in r.stdout
    assert not state.exists() and cfg.read_bytes() == before and not (tmp_path / "git").exists()


def test_add_over_a_deployed_service_adopts_nothing(opskit: RunOpskit, tmp_path: Path) -> None:
    """A service opskit deployed already (its config table written by hand, then `add`): the
    journal's record stands."""
    wt, state, cfg = _running_checkout(tmp_path)
    j = Journal(state)
    did = j.deploy_start("app", rev(wt, "HEAD~1"), previous=None, chain="earlier")
    j.deploy_finish(did, "healthy")
    j.close()
    r = _add(opskit, cfg, wt, tmp_path)
    assert r.returncode == 0 and "unchanged: deploy record of app\n" in r.stdout, r.stdout + r.stderr
    events, rows = _adopted(state)
    assert events == [] and [x["id"] for x in rows] == [did]
