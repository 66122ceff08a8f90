"""The fleet's views: `opskit events`, `status`, `incident` and `doctor` over every host's
events in one PostgreSQL journal (tests/support/postgres.py), and what each says when the
database is away. Hosts are separate configs and state dirs on this machine
(tests/support/fleet.py); where the point is the pushes, they are real pushes through
installed hooks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opskit.base import config
from opskit.storage import fleet as fleet_mod
from opskit.wiring import hooks
from tests.support.fleet import Host, fleet_rows, make_host
from tests.support.gitsandbox import Sandbox, make_sandbox
from tests.support.hooks import toml_str
from tests.support.postgres import Postgres


def _migrate(host: Host) -> None:
    settings = config.load(host.config)
    assert settings.fleet is not None
    fleet_mod.migrate(fleet_mod.Fleet(settings.fleet, settings.state_dir))


def _hosts(tmp_path: Path, url: str, *names: str, extra: str = "") -> list[Host]:
    found = [make_host(tmp_path, n, url, extra) for n in names]
    _migrate(found[0])
    return found


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.splitlines() if x.strip()]


def _service_host(tmp_path: Path, name: str, url: str) -> tuple[Host, Sandbox]:
    """A host running service `svc` with opskit's hooks installed: a push deploys it and the
    probe gates it."""
    sb = make_sandbox(tmp_path / f"sb-{name}", files={"app.txt": "v1\n"})
    extra = (f"[service.svc]\nrepo = {toml_str(sb.bare)}\nworktree = {toml_str(sb.worktree)}\n"
             f"branch = {toml_str(sb.branch)}\ndeploy = \"true\"\ndirect_push = true\n"
             "[service.svc.health]\ncmd = \"test -f app.txt\"\nwindow = 0.3\nperiod = 0.1\nstartup = 0.5\n")
    host = make_host(tmp_path, name, url, extra)
    settings = config.load(host.config)
    hooks.install(settings, settings.service("svc"))
    return host, sb


# --- pushes on two hosts at once ---------------------------------------------------------------

def test_pushes_on_two_hosts_at_once_reach_one_journal_and_status_shows_both(
        tmp_path: Path, fleet_url: str, postgres_server: Postgres, opskit: Any) -> None:
    (a, sa), (b, sb) = _service_host(tmp_path, "alpha", fleet_url), _service_host(tmp_path, "beta", fleet_url)
    _migrate(a)
    new = {h.name: s.commit({"app.txt": f"v2 on {h.name}\n"}, f"v2 on {h.name}") for h, s in ((a, sa), (b, sb))}
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    threads = [threading.Thread(target=lambda h=h, s=s: results.__setitem__(h.name, s.push("master", check=False)))
               for h, s in ((a, sa), (b, sb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r.returncode == 0 for r in results.values()), {k: r.stderr for k, r in results.items()}
    for h in (a, b):  # whatever a push's last append did not forward yet
        assert opskit("--config", str(h.config), "journal", "sync").returncode == 0

    rows = fleet_rows(postgres_server, fleet_url, "SELECT id, host, local_id, type, sha FROM events ORDER BY id")
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids))
    for h in (a, b):
        local = [(e.id, e.type) for e in h.journal().query()]
        assert [(r[2], r[3]) for r in rows if r[1] == h.name] == local  # every event once, in order
        assert ("health.pass", new[h.name]) in [(r[3], r[4]) for r in rows if r[1] == h.name]

    r = opskit("--config", str(a.config), "status", "--json")
    data = json.loads(r.stdout)
    assert r.returncode == 0, r.stdout
    fl = data["fleet"]
    assert (fl["host"], fl["reachable"], fl["pending"]) == ("alpha", True, 0)
    assert [h["host"] for h in fl["hosts"]] == ["alpha", "beta"]
    for h in fl["hosts"]:
        (svc,) = h["services"]
        assert svc["name"] == "svc" and svc["last_verdict"]["status"] == "healthy"
        assert svc["last_verdict"]["sha"] == new[h["host"]]
        assert h["forwarded"] == max(r[2] for r in rows if r[1] == h["host"])
    assert [s["name"] for s in data["services"]] == ["svc"]  # this host's own, as on one host
    text = opskit("--config", str(a.config), "status").stdout
    assert "host alpha: last seen" in text and "host beta: last seen" in text
    assert f"svc: last verdict healthy (health.pass {new['beta'][:10]})" in text

    checks = json.loads(opskit("--config", str(a.config), "doctor", "--json").stdout)["checks"]
    (check,) = [c for c in checks if c["name"] == "fleet journal"]
    assert check["ok"] and check["detail"].endswith("as host alpha: schema current, every event forwarded")
    assert postgres_server.password not in check["detail"]

    only = json.loads(opskit("--config", str(a.config), "status", "--json", "--host", "beta").stdout)
    assert [h["host"] for h in only["fleet"]["hosts"]] == ["beta"] and only["services"] == []


# --- events ---------------------------------------------------------------------------------

def test_events_show_every_host_with_its_name_and_host_filters(tmp_path: Path, fleet_url: str, opskit: Any) -> None:
    a, b = _hosts(tmp_path, fleet_url, "alpha", "beta")
    ja, jb = a.journal(), b.journal()
    ja.append("deploy.start", "web", {"n": 1})
    jb.append("deploy.start", "db", {"n": 2})
    ja.append("health.pass", "web", {"n": 3})
    jb.append("health.fail", "db", {"n": 4})

    r = opskit("--config", str(a.config), "events", "--json")
    assert r.returncode == 0, r.stderr
    got = _lines(r.stdout)
    assert [(e["host"], e["type"], e["data"]["n"]) for e in got] == [
        ("alpha", "deploy.start", 1), ("beta", "deploy.start", 2), ("alpha", "health.pass", 3), ("beta", "health.fail", 4)]
    assert [e["id"] for e in got] == sorted({e["id"] for e in got})

    r = opskit("--config", str(a.config), "events", "--host", "beta", "--json")
    assert [(e["host"], e["data"]["n"]) for e in _lines(r.stdout)] == [("beta", 2), ("beta", 4)]
    r = opskit("--config", str(b.config), "events", "--host", "alpha", "--type", "health.", "--limit", "5")
    (line,) = r.stdout.splitlines()
    assert line.split()[2:5] == ["alpha", "health.pass", "web"]
    assert r.stderr == ""


def test_events_follow_reads_every_host_by_the_fleet_id(tmp_path: Path, fleet_url: str) -> None:
    a, b = _hosts(tmp_path, fleet_url, "alpha", "beta")
    a.journal().append("job.ok", "before", {})
    p = subprocess.Popen([sys.executable, "-m", "opskit", "--config", str(a.config), "events", "--follow", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stuck = threading.Timer(30, p.kill)  # a line that never comes fails the test, not the suite's clock
    stuck.start()
    try:
        assert p.stdout is not None
        first = json.loads(p.stdout.readline())
        assert (first["host"], first["service"]) == ("alpha", "before")
        jb, ja = b.journal(), a.journal()
        jb.append("job.ok", "b1", {})
        ja.append("job.ok", "a1", {})
        jb.append("job.ok", "b2", {})
        got = [json.loads(p.stdout.readline()) for _ in range(3)]
        assert [(e["host"], e["service"]) for e in got] == [("beta", "b1"), ("alpha", "a1"), ("beta", "b2")]
        assert [e["id"] for e in got] == sorted(e["id"] for e in got) and got[0]["id"] > first["id"]
    finally:
        stuck.cancel()
        p.kill()
        p.wait(10)


def _next_within(gen: Iterator[Any], timeout: float) -> Any:
    """The generator's next item, or a failure after `timeout` (its daemon thread is left behind)."""
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(next(gen)), daemon=True)
    t.start()
    t.join(timeout)
    assert got, f"nothing within {timeout} s"
    return got[0]


def test_follow_shows_an_event_whose_forward_committed_after_a_later_id(tmp_path: Path, fleet_url: str) -> None:
    # Two hosts forwarding at once: the id taken first can be committed last. A follower that
    # moved past the later id must still show the earlier one once it commits.
    import psycopg

    from opskit.storage import fleet_read

    a, b = _hosts(tmp_path, fleet_url, "alpha", "beta")
    ja = a.journal()
    assert ja.fleet is not None
    follow = fleet_read.follow(ja.fleet, ja, start_after=fleet_read.last_id(ja.fleet, ja), poll=0.05)
    with psycopg.connect(fleet_url) as slow:
        with slow.cursor() as cur:  # a forward under way on a third host: its id taken, not committed
            cur.execute("INSERT INTO events (host, local_id, ts, type, service, data) "
                        "VALUES ('gamma', 1, '2026-01-01T00:00:00Z', 'job.ok', 'slow', '{}') RETURNING id")
            row = cur.fetchone()
            assert row is not None
            first = int(row[0])
        b.journal().append("job.ok", "quick", {})
        later = _next_within(follow, 10)
        assert (later.host, later.service) == ("beta", "quick") and later.id > first
        slow.commit()
    earlier = _next_within(follow, 10)
    assert (earlier.id, earlier.host, earlier.service) == (first, "gamma", "slow")


# --- incident across hosts ------------------------------------------------------------------

def test_incident_of_a_revert_on_host_b_is_told_from_host_a(tmp_path: Path, fleet_url: str,
                                                            postgres_server: Postgres, opskit: Any) -> None:
    a, b = _hosts(tmp_path, fleet_url, "alpha", "beta")
    a.journal().append("deploy.complete", "web", {"kind": "deploy"}, chain="d-aaaa", sha="a" * 40)
    jb = b.journal()
    chain, bad, good = "d-bbbb", "b" * 40, "c" * 40
    jb.append("deploy.start", "api", {"kind": "deploy", "subject": "bad"}, chain=chain, sha=bad)
    jb.append("deploy.complete", "api", {"kind": "deploy", "sha": bad}, chain=chain, sha=bad)
    fail = jb.append("health.fail", "api", {"reason": "Connection refused"}, chain=chain, sha=bad)
    jb.append("rollback.start", "api", {"bad": bad, "good": good, "strategy": "revert", "reverted": [bad],
                                         "reason": "health gate failed"}, chain=chain, sha=bad)
    jb.append("rollback.complete", "api", {"revert": "d" * 40}, chain=chain, sha="d" * 40)
    assert opskit("--config", str(b.config), "journal", "sync").returncode == 0

    r = opskit("--config", str(a.config), "incident", "last", "--json")
    assert r.returncode == 0, r.stderr
    inc = json.loads(r.stdout)
    assert (inc["service"], inc["chain"], inc["status"], inc["bad"]) == ("api", chain, "reverted", bad)
    (anchor,) = fleet_rows(postgres_server, fleet_url,
                           f"SELECT id FROM events WHERE host = 'beta' AND local_id = {fail.id}")
    assert inc["event_id"] == anchor[0]
    assert [s["kind"] for s in inc["steps"]] == ["deploy.start", "deploy.complete", "health.fail",
                                                 "rollback.start", "rollback.complete"]
    r = opskit("--config", str(a.config), "incident", str(anchor[0]), "--service", "api")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"api: incident #{anchor[0]} (chain {chain}): reverted")


# --- the database away ------------------------------------------------------------------------

def test_database_stopped_events_status_and_doctor_work_locally_and_say_since_when(
        tmp_path: Path, fleet_url: str, postgres_server: Postgres, opskit: Any) -> None:
    a, b = _hosts(tmp_path, fleet_url, "alpha", "beta")
    b.journal().append("job.ok", "theirs", {})
    a.journal().append("job.ok", "mine", {})
    r = opskit("--config", str(a.config), "status")
    assert r.returncode == 0, r.stdout
    postgres_server.stop()
    try:
        a.journal().append("job.ok", "offline", {})  # cannot be forwarded: recorded as away
        down = a.journal().kv_get("fleet", "unreachable")
        assert isinstance(down, dict) and down["since"]
        r = opskit("--config", str(a.config), "events", "--json")
        assert r.returncode == 0
        assert [e["service"] for e in _lines(r.stdout) if e["type"] == "job.ok"] == ["mine", "offline"]
        (line,) = r.stderr.splitlines()
        assert line.startswith(f"opskit: the fleet journal is unreachable since {down['since']} (")
        assert postgres_server.password not in r.stderr

        r = opskit("--config", str(a.config), "status", "--json")
        assert r.returncode == 1
        data = json.loads(r.stdout)
        assert (data["fleet"]["reachable"], data["fleet"]["unreachable_since"]) == (False, down["since"])
        assert data["fleet"]["pending"] >= 1
        assert any(x.startswith(f"fleet journal unreachable since {down['since']}: ") for x in data["attention"])
        text = opskit("--config", str(a.config), "status").stdout
        assert f"  - fleet journal unreachable since {down['since']}" in text

        r = opskit("--config", str(a.config), "doctor", "--json")
        check = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "fleet journal")
        assert not check["ok"] and f"unreachable since {down['since']}" in check["detail"]
        assert "start PostgreSQL at 127.0.0.1:" in check["fix"] and "opskit journal sync" in check["fix"]
        assert postgres_server.password not in r.stdout

        r = opskit("--config", str(a.config), "incident", "--list")
        assert (r.returncode, r.stdout) == (0, "no incidents\n")
        assert r.stderr.startswith(f"opskit: the fleet journal is unreachable since {down['since']} (")

        from opskit.views import heartbeat  # the ping's reasons: this host's record, no connection
        settings = config.load(a.config)
        why = heartbeat.reasons(settings, a.journal())
        assert [x for x in why if x.startswith("fleet journal unreachable since")] == [
            x for x in data["attention"] if x.startswith("fleet journal unreachable since")]
    finally:
        postgres_server.start()
    assert opskit("--config", str(a.config), "journal", "sync").returncode == 0
    r = opskit("--config", str(a.config), "status", "--json")
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["fleet"]["reachable"] is True
    r = opskit("--config", str(a.config), "events", "--json", "--type", "job.ok")
    assert [(e["host"], e["service"]) for e in _lines(r.stdout)] == [
        ("beta", "theirs"), ("alpha", "mine"), ("alpha", "offline")]


def test_host_option_without_a_fleet_journal_is_exit_2_naming_the_fix(write_config: Any, opskit: Any) -> None:
    cfg = write_config("[opskit]\n")
    for cmd in (["events", "--host", "beta"], ["status", "--host", "beta"]):
        r = opskit("--config", str(cfg), *cmd)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        (line,) = [x for x in r.stderr.splitlines() if x.strip()]
        assert "--host: this host has no fleet journal" in line and '[opskit] journal = "postgresql://' in line


# --- the hooks' budget -------------------------------------------------------------------------

def test_the_pre_commit_refusal_never_imports_psycopg_in_a_fleet(tmp_path: Path, fleet_url: str,
                                                                  postgres_server: Postgres) -> None:
    host, sb = _service_host(tmp_path, "alpha", fleet_url)
    _migrate(host)
    hook = sb.worktree / ".git" / "hooks" / "pre-commit"
    code = ("import sys\nfrom opskit.hookmain import main\n"
            f"rc = main(['pre-commit', '--config', {str(host.config)!r}, '--service', 'svc', '--self', {str(hook)!r}])\n"
            "assert rc == 1, rc\n"
            "assert 'psycopg' not in sys.modules, 'psycopg imported'\n"
            "assert 'opskit.storage.fleet' not in sys.modules, 'the fleet module imported'\n")
    r = subprocess.run([sys.executable, "-I", "-c", code], cwd=sb.worktree, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    # and the refusal still reaches the fleet: the detached child journals and forwards it
    deadline = time.monotonic() + 20
    while not fleet_rows(postgres_server, fleet_url, "SELECT 1 FROM events WHERE type = 'lockdown.blocked'"):
        assert time.monotonic() < deadline, "lockdown.blocked never reached the fleet journal"
        time.sleep(0.1)


@pytest.mark.parametrize("argv", [["events", "--limit", "3"], ["events", "--host", "beta"]])
def test_the_events_fast_path_reads_the_fleet(tmp_path: Path, fleet_url: str, argv: list[str]) -> None:
    a, b = _hosts(tmp_path, fleet_url, "alpha", "beta")
    b.journal().append("job.ok", "theirs", {})
    code = ("import sys\nfrom opskit import cli, fastpath\n"
            f"assert fastpath.match({argv!r}) is not None\n"
            f"rc = cli.main(['--config', {str(a.config)!r}, *{argv!r}])\n"
            "assert rc == 0, rc\nassert 'typer' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    assert line.split()[2:5] == ["beta", "job.ok", "theirs"]
