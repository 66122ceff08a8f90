"""`opskit incident` after a real auto-revert through installed hooks."""

from __future__ import annotations

import datetime as dt
import json

from opskit.base.clock import parse_iso
from tests.support.chain import ChainStage, chain_stage_fixture, order  # noqa: F401 - the cs fixture


def _probe_time(ev_data: dict[str, object], ok: bool) -> dt.datetime:
    log = ev_data["probe_log"]
    assert isinstance(log, list)
    at = next(float(p[0]) for p in log if bool(p[1]) is ok)
    return parse_iso(str(ev_data["started"])) + dt.timedelta(seconds=at)


def test_incident_last_after_a_revert_tells_the_story(cs: ChainStage) -> None:
    cs.feature("feature/bad", {"service.mode": "crash\n", "app.txt": "v3\n"}, message="crash it")
    cs.push("feature/bad")
    done = cs.last("rollback.complete")
    fail = cs.last("health.fail")
    healed = next(e for e in cs.events("health.pass", chain=done.chain) if e.sha == done.data["revert"])

    p = cs.cli("incident", "last", "--json")
    assert p.returncode == 0, p.stderr
    inc = json.loads(p.stdout)
    assert inc["status"] == "reverted" and inc["chain"] == done.chain and inc["revert"] == done.data["revert"]
    kinds = [s["kind"] for s in inc["steps"]]
    assert order(kinds, "push.received", "test.pass", "review.pass", "merge.complete", "deploy.start",
                 "deploy.complete", "probe", "health.fail", "rollback.start", "deploy.start", "deploy.complete",
                 "probe", "health.pass", "rollback.complete", "notify"), kinds
    times = [s["time"] for s in inc["steps"]]
    assert times == sorted(times)
    assert kinds.count("probe") == fail.data["probes"] + healed.data["probes"]
    # downtime: first failed probe of the failing gate → first healthy probe of the re-gate
    want = (_probe_time(healed.data, True) - _probe_time(fail.data, False)).total_seconds()
    assert abs(inc["downtime"] - want) < 0.001 and 0 < inc["downtime"]
    bad_deploy = next(e for e in cs.events("deploy.complete", chain=done.chain) if e.data.get("kind") == "deploy")
    assert abs(inc["detected_after"] - (fail.when - bad_deploy.when).total_seconds()) < 0.001
    assert inc["detected_after"] < inc["restored_after"]
    assert inc["human_involvement"] is None
    notified = [n for n in inc["notifications"] if n["channel"] == "ops"]
    assert notified and notified[0]["status"] == "delivered"

    text = cs.cli("incident", "last", "--service", "svc")
    assert text.returncode == 0
    assert "downtime:" in text.stdout and "human involvement: none" in text.stdout
    # from any event of it, the same incident
    assert json.loads(cs.cli("incident", str(fail.id), "--json").stdout)["event_id"] == inc["event_id"]
    md = cs.cli("incident", "last", "--markdown")
    assert md.returncode == 0 and "# Postmortem: svc" in md.stdout and "## Follow-ups" in md.stdout
    assert "crash it" in md.stdout or "Merge feature/bad" in md.stdout  # the reverted commit, with its stat
    assert "service.mode" in md.stdout
    listed = cs.cli("incident", "--list")
    assert listed.returncode == 0 and f"#{inc['event_id']}" in listed.stdout and "reverted" in listed.stdout
    # bad input: exit 2, one line, nothing changed
    for args in (["incident", "nope"], ["incident", "999999"], ["incident", "last", "--service", "nosuch"]):
        r = cs.cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    print("\n".join(text.stdout.splitlines()))


def test_no_incident_yet_is_one_line(cs: ChainStage) -> None:
    r = cs.cli("incident", "last")
    assert r.returncode == 2 and "no incident in the journal" in r.stderr
    assert cs.cli("incident", "--list").stdout.strip() == "no incidents"
