"""The fleet journal: hosts on one machine (their own configs, state dirs and host names)
sharing a real PostgreSQL started by the tests (tests/support/postgres.py).

What is held here: the schema is made and migrated by `journal migrate`, once, versioned;
every host's events reach the shared journal in their order, each exactly once, with their
original times, also when the database was away while they were written (a revert included)
and when a forward is cut between the database's commit and the host's cursor; a tree
reverted on one host is refused by another host's pre-receive, also from the last synced list
when the database is gone; a freeze and an unfreeze count on every host; the password never
reaches output or events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opskit.base import config
from opskit.deploy.pipeline import deploy
from opskit.storage import fleet as fleet_mod
from opskit.storage.journal import Journal
from tests.support.fleet import fleet_rows, join_fleet, make_host, migrated
from tests.support.gitsandbox import git, rev
from tests.support.hooks import hooked_service
from tests.support.pipeline import seeded_stage
from tests.support.postgres import Postgres

ROOT = Path(__file__).resolve().parents[1]


def local_events(journal: Journal) -> list[tuple[int, str, str, str | None]]:
    return [(e.id, e.ts, e.type, e.service) for e in journal.query()]


def shared_events(pg: Postgres, url: str, host: str) -> list[tuple[int, str, str, str | None]]:
    return [tuple(r) for r in fleet_rows(pg, url, "SELECT local_id, ts, type, service FROM events "
                                                  f"WHERE host = '{host}' ORDER BY id")]


# --- the schema ----------------------------------------------------------------------------------

def test_migrate_makes_the_schema_once_and_concurrent_runs_queue(tmp_path: Path, postgres_server: Postgres,
                                                                  fleet_url: str, opskit: Any) -> None:
    a = make_host(tmp_path, "alpha", fleet_url)
    before = opskit("--config", str(a.config), "journal", "sync")
    assert before.returncode == 1 and "journal migrate" in before.stderr  # not migrated: said, with the fix

    env = {**os.environ, "OPSKIT_CONFIG": str(a.config)}
    runs = [subprocess.Popen([sys.executable, "-m", "opskit", "journal", "migrate"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in runs]
    assert [p.returncode for p in runs] == [0, 0, 0], outs
    assert sorted(o for o, _ in outs).count(
        "fleet journal: schema version 1, current; nothing to do\n") == 2  # one of the three applied it
    assert fleet_rows(postgres_server, fleet_url, "SELECT version FROM opskit_schema") == [(1,)]
    again = opskit("--config", str(a.config), "journal", "migrate")
    assert again.returncode == 0 and again.stdout == "fleet journal: schema version 1, current; nothing to do\n"


def test_migrate_without_a_fleet_journal_is_exit_2(write_config: Any, opskit: Any) -> None:
    cfg = write_config("[opskit]\n")
    r = opskit("--config", str(cfg), "journal", "migrate")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert '[opskit] journal = "postgresql://…"' in r.stderr


@pytest.mark.parametrize("value", ["mysql://ops:hunter2-secret@db/ops", "journal.db", "postgresql//x"])
def test_a_journal_that_is_not_a_postgresql_url_is_exit_2_and_never_quoted(write_config: Any, opskit: Any,
                                                                          value: str) -> None:
    cfg = write_config(f'[opskit]\njournal = "{value}"\n')
    r = opskit("--config", str(cfg), "status")
    assert r.returncode == 2, r
    assert "opskit.journal" in r.stderr and "postgresql://" in r.stderr
    assert value not in r.stderr + r.stdout and "hunter2" not in r.stderr + r.stdout


def test_the_password_never_reaches_output_or_events(tmp_path: Path, postgres_server: Postgres,
                                                     fleet_url: str, opskit: Any) -> None:
    wrong = "wrong-" + postgres_server.password[::-1]
    a = make_host(tmp_path, "alpha", postgres_server.url(fleet_url.rsplit("/", 1)[1], password=wrong))
    r = opskit("--config", str(a.config), "journal", "sync")
    assert r.returncode == 1
    assert "password authentication failed" in r.stderr  # the real reason, from the server
    assert wrong not in r.stdout + r.stderr
    ev = a.journal().query(type_prefix="fleet.")
    assert [e.type for e in ev] == ["fleet.unreachable"]
    assert wrong not in json.dumps(ev[0].data) and "password authentication failed" in ev[0].data["error"]


# --- events: every host's, in order, exactly once ------------------------------------------------

WRITER = """
import sys
from opskit.base import config
from opskit.storage.journal import Journal
s = config.load_file(__import__("pathlib").Path(sys.argv[1]))
j = Journal(s.state_dir, fleet=s.fleet)
for i in range(int(sys.argv[2])):
    j.append("job.ok", "svc", {"writer": sys.argv[3], "i": i})
"""


def test_events_of_two_hosts_written_at_once_reach_one_journal_in_order(tmp_path: Path, postgres_server: Postgres,
                                                                        fleet_url: str) -> None:
    hosts = [migrated(make_host(tmp_path, "alpha", fleet_url)), make_host(tmp_path, "beta", fleet_url)]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(h.config), "150", f"{h.name}{k}"])
               for h in hosts for k in range(2)]  # two processes per host, four at once
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    ids = [r[0] for r in fleet_rows(postgres_server, fleet_url, "SELECT id FROM events")]
    assert len(ids) == len(set(ids)) == 600
    for h in hosts:
        mine = local_events(h.journal())
        assert len(mine) == 300
        # the shared journal has each of the host's events once, in the host's order, with its time
        assert shared_events(postgres_server, fleet_url, h.name) == mine
        assert h.journal().kv_get("fleet", "forwarded") == mine[-1][0]


def test_a_forward_cut_after_the_database_committed_inserts_nothing_twice(
        tmp_path: Path, postgres_server: Postgres, fleet_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    a = migrated(make_host(tmp_path, "alpha", fleet_url))
    j = a.journal()
    j.append("job.ok", "svc", {"i": 0})
    real_kv_set = Journal.kv_set

    def killed_before_the_cursor(self: Journal, scope: str, key: str, value: Any) -> None:
        if (scope, key) == ("fleet", "forwarded"):
            raise KeyboardInterrupt  # Ctrl-C between the database's commit and the cursor
        real_kv_set(self, scope, key, value)

    monkeypatch.setattr(Journal, "kv_set", killed_before_the_cursor)
    with pytest.raises(KeyboardInterrupt):
        j.append("job.ok", "svc", {"i": 1})
    monkeypatch.setattr(Journal, "kv_set", real_kv_set)
    assert j.kv_get("fleet", "forwarded") == 1  # the cursor did not move past the second event
    assert [r[0] for r in fleet_rows(postgres_server, fleet_url, "SELECT local_id FROM events")] == [1, 2]
    assert j.fleet is not None and j.fleet.sync(j, force=True) == 1  # sent again: taken as already there
    assert shared_events(postgres_server, fleet_url, "alpha") == local_events(j)


def test_the_database_stopped_mid_deploy_loses_nothing_and_catches_up_in_order(
        tmp_path: Path, postgres_server: Postgres, fleet_url: str) -> None:
    """A bad deploy whose own deploy command takes the database away: the health gate fails,
    the revert is pushed and redeployed, all while the fleet journal is gone; once it is back,
    every event is there once, in order, with the time it happened."""
    stop = postgres_server.stop_command()
    st = seeded_stage(tmp_path, deploy=f"if grep -q crash service.mode; then {stop}; fi; {{restart}}")
    try:
        join_fleet(st.config_path, fleet_url, "alpha")
        settings = config.load_file(st.config_path)
        j = Journal(settings.state_dir, fleet=settings.fleet)
        assert j.fleet is not None
        fleet_mod.migrate(j.fleet)
        j.append("job.ok", "svc", {"before": True})
        assert shared_events(postgres_server, fleet_url, "alpha") == local_events(j) != []  # live
        bad = st.good("crash", message="a bad change")
        result = deploy(settings, j, "svc", bad, write=lambda _: None)
        assert result.status == "reverted", result
        assert st.worktree_head() != bad and st.sb.tip() != bad  # the revert landed and is live
        down = j.kv_get("fleet", "unreachable")
        assert down is not None and "since" in down
        local = local_events(j)
        types = [t for _, _, t, _ in local]
        assert "rollback.complete" in types and "fleet.unreachable" in types
        postgres_server.start()
        assert j.fleet.sync(j, force=True) is not None
        j.fleet.sync(j, force=True)  # the fleet.reachable it journaled on the way
        assert j.kv_get("fleet", "unreachable") is None
        assert shared_events(postgres_server, fleet_url, "alpha") == local_events(j)
        assert [e.type for e in j.query(type_prefix="fleet.")] == ["fleet.unreachable", "fleet.reachable"]
    finally:
        postgres_server.start()
        st.close()


# --- quarantine and freezes: one list for the fleet ----------------------------------------------

def test_a_tree_reverted_on_one_host_is_refused_on_another_even_once_the_database_is_gone(
        tmp_path: Path, postgres_server: Postgres, fleet_url: str) -> None:
    a = migrated(make_host(tmp_path, "alpha", fleet_url))
    b = hooked_service(tmp_path / "b", tmp_path / "state-b", extra="direct_push = true\n")
    join_fleet(b.config, fleet_url, "beta")
    bad = b.sb.commit({"app.txt": "broken\n"}, "bad")
    tree = git(b.sb.dev, "rev-parse", "HEAD^{tree}").stdout.strip()
    ja = a.journal()
    ev = ja.append("rollback.complete", "svc", {"reverted": bad, "reason": "Connection refused"})
    ja.quarantine_add("svc", tree, bad, ev.id, "Connection refused")
    ja.append("job.ok", "svc")  # its sync carries the quarantine row to the fleet
    assert fleet_rows(postgres_server, fleet_url, "SELECT tree, host FROM quarantine") == [(tree, "alpha")]

    r = b.sb.push("master", check=False)
    assert r.returncode != 0 and "auto-reverted" in r.stderr, r.stderr
    assert f"rollback event #{ev.id}" in r.stderr
    assert b.sb.tip() != bad

    # beta learns the list at its next sync; without the database, that list still holds
    settings = config.load_file(b.config)
    jb = Journal(settings.state_dir, fleet=settings.fleet)
    assert jb.fleet is not None and jb.fleet.sync(jb, force=True) is not None
    postgres_server.stop()
    try:
        r = b.sb.push("master", check=False)
        assert r.returncode != 0 and "auto-reverted" in r.stderr, r.stderr
        assert b.sb.tip() != bad
    finally:
        postgres_server.start()

    # released on alpha: beta takes it (the shared row is newer than its copy) once it tries the
    # database again: at its next sync, or RETRY seconds after it last found the database gone
    assert ja.quarantine_release("svc", tree, "ops") == 1
    ja.append("quarantine.released", "svc", {"tree": tree})
    r = b.sb.push("master", check=False)
    assert r.returncode != 0 and "auto-reverted" in r.stderr  # within RETRY: the synced list
    down = jb.kv_get("fleet", "unreachable")
    jb.kv_set("fleet", "unreachable", {**down, "last_try": "2000-01-01T00:00:00Z"})  # RETRY has passed
    assert jb.conn.execute("SELECT released FROM quarantine").fetchone()[0] is None  # beta's copy: stale
    r = b.sb.push("master", check=False)
    assert r.returncode == 0, r.stderr
    assert rev(b.sb.bare, "master") == bad


def test_a_freeze_and_an_unfreeze_count_on_every_host(tmp_path: Path, postgres_server: Postgres,
                                                       fleet_url: str, opskit: Any) -> None:
    extra = '[service.svc]\nrepo = "/nonexistent/svc.git"\nworktree = "/nonexistent/svc"\n'
    a = migrated(make_host(tmp_path, "alpha", fleet_url, extra))
    b = make_host(tmp_path, "beta", fleet_url, extra)
    r = opskit("--config", str(a.config), "freeze", "svc", "--reason", "db migration")
    assert r.returncode == 0, r
    frozen = b.journal().frozen("svc")
    assert frozen is not None and "db migration" in frozen["reason"]
    r = opskit("--config", str(b.config), "unfreeze", "svc")
    assert r.returncode == 0, r
    assert a.journal().frozen("svc") is None and b.journal().frozen("svc") is None
    # frozen on beta while the database is gone: beta holds it; alpha learns it once it is back
    postgres_server.stop()
    try:
        r = opskit("--config", str(b.config), "freeze", "svc", "--reason", "offline freeze")
        assert r.returncode == 0, r
        assert b.journal().frozen("svc") is not None
    finally:
        postgres_server.start()
    assert a.journal().frozen("svc") is None  # not forwarded yet
    r = opskit("--config", str(b.config), "journal", "sync")
    assert r.returncode == 0, r
    frozen = a.journal().frozen("svc")
    assert frozen is not None and "offline freeze" in frozen["reason"]


def test_cron_check_forwards_what_was_kept_while_the_database_was_away(
        tmp_path: Path, postgres_server: Postgres, fleet_url: str, opskit: Any) -> None:
    a = migrated(make_host(tmp_path, "alpha", fleet_url))
    postgres_server.stop()
    try:
        j = a.journal()
        for i in range(3):
            j.append("job.ok", "svc", {"i": i})
        r = opskit("--config", str(a.config), "cron-check")
        assert "the fleet journal cannot be reached" in r.stdout + r.stderr, r
    finally:
        postgres_server.start()
    assert fleet_rows(postgres_server, fleet_url, "SELECT count(*) FROM events") == [(0,)]
    r = opskit("--config", str(a.config), "cron-check")
    assert "fleet journal" not in r.stdout + r.stderr, r
    got = shared_events(postgres_server, fleet_url, "alpha")
    assert got[:4] == local_events(a.journal())[:4] and [t for _, _, t, _ in got[:4]] == [
        "job.ok", "fleet.unreachable", "job.ok", "job.ok"]


# --- found by a second reader: each seen failing before its fix ----------------------------------

def _journal_at(host: Any, clock: Any = None) -> Journal:
    from opskit.base.clock import SYSTEM

    s = config.load_file(host.config)
    return Journal(s.state_dir, clock or SYSTEM, fleet=s.fleet)


def _freeze(j: Journal, service: str) -> None:
    from opskit.base.clock import iso, iso_precise

    now = j.clock.now()
    j.kv_set("frozen", service, {"reason": "r", "event_id": None, "since": iso(now),
                                 "since_precise": iso_precise(now), "freeze_id": os.urandom(4).hex()})


def test_a_second_state_dir_under_a_host_name_in_use_is_refused_not_dropped(
        tmp_path: Path, postgres_server: Postgres, fleet_url: str) -> None:
    """A rebuilt or cloned host with a fresh state dir starts its local ids again: its events
    would be taken for the old ones and dropped. It is refused, said, and keeps them."""
    old = migrated(make_host(tmp_path / "old", "web1", fleet_url)).journal()
    for i in range(5):
        old.append("job.ok", "svc", {"i": i})
    new = make_host(tmp_path / "new", "web1", fleet_url).journal()
    for i in range(3):
        new.append("job.fail", "svc", {"i": i})
    assert new.fleet is not None and new.fleet.sync(new, force=True) is None
    down = new.kv_get("fleet", "unreachable")
    assert "already used in the fleet by another state dir" in down["error"] and "[opskit] host" in down["error"]
    assert new.kv_get("fleet", "forwarded") is None  # nothing taken as sent
    assert fleet_rows(postgres_server, fleet_url, "SELECT count(*) FROM events WHERE type = 'job.fail'") == [(0,)]
    assert old.fleet is not None and old.fleet.sync(old, force=True) is not None  # the first one goes on


def test_a_tree_another_host_reverted_is_listed_and_released_here(tmp_path: Path, fleet_url: str) -> None:
    a = migrated(make_host(tmp_path, "a", fleet_url))
    b = make_host(tmp_path, "b", fleet_url)
    b.journal().append("job.ok", None, {})  # b merged once, before a's revert
    a.journal().quarantine_add("svc", "t" * 40, "s" * 40, 1, "reverted")
    jb = b.journal()  # a new process on b: `opskit quarantine list`, then `release`
    assert [r["tree"] for r in jb.quarantine_list("svc")] == ["t" * 40]
    assert jb.quarantine_release("svc", "tttt", "ops") == 1
    assert a.journal().quarantined("svc", "t" * 40) is None  # released for the whole fleet


def test_an_unfreeze_applied_from_another_host_is_never_pushed_back_as_ours(tmp_path: Path, fleet_url: str) -> None:
    import datetime as dt

    from opskit.base.clock import FakeClock

    ahead = FakeClock(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=120))  # a's clock runs fast
    a = migrated(make_host(tmp_path, "a", fleet_url))
    b, c = make_host(tmp_path, "b", fleet_url), make_host(tmp_path, "c", fleet_url)
    ja, jb, jc = _journal_at(a, ahead), _journal_at(b), _journal_at(c)
    assert ja.fleet and jb.fleet and jc.fleet
    _freeze(jb, "svc")
    jb.fleet.sync(jb, force=True)
    ja.fleet.sync(ja, force=True)
    assert ja.kv_get("frozen", "svc") is not None
    jb.kv_delete("frozen", "svc")  # b unfreezes and pushes it
    ja.fleet.sync(ja, force=True)  # a applies b's unfreeze: a did not unfreeze anything itself
    assert ja.kv_get("fleet-unfrozen", "svc") is None
    _freeze(jc, "svc")  # c freezes it again
    ja.fleet.sync(ja, force=True)
    assert jc.frozen("svc") is not None


def test_a_freeze_rewritten_with_its_event_reaches_the_fleet(tmp_path: Path, postgres_server: Postgres,
                                                              fleet_url: str) -> None:
    """deploy/freeze.py writes a freeze, then the same freeze with `frozen_event` (what an
    Unfreeze button is bound to): other hosts must get the second."""
    ja = migrated(make_host(tmp_path, "a", fleet_url)).journal()
    _freeze(ja, "svc")
    ja.kv_set("frozen", "svc", {**ja.kv_get("frozen", "svc"), "frozen_event": 42})
    assert ja.fleet is not None and ja.fleet.sync(ja, force=True) is not None
    ((value,),) = fleet_rows(postgres_server, fleet_url, "SELECT value FROM frozen WHERE service = 'svc'")
    assert json.loads(value)["frozen_event"] == 42


def test_a_local_journal_fault_as_the_database_comes_back_never_reaches_the_step(
        tmp_path: Path, fleet_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    j = migrated(make_host(tmp_path, "a", fleet_url)).journal()
    j.kv_set("fleet", "unreachable", {"since": "2026-01-01T00:00:00Z", "error": "x",
                                      "last_try": "2026-01-01T00:00:00Z"})
    real = Journal.kv_delete

    def full(self: Journal, scope: str, key: str) -> None:
        if scope == "fleet":
            raise sqlite3.OperationalError("database or disk is full")
        real(self, scope, key)

    monkeypatch.setattr(Journal, "kv_delete", full)
    assert j.append("job.ok", "svc", {}).id > 0  # the step that appended goes on


def test_a_url_the_driver_quotes_in_its_error_is_masked(tmp_path: Path, postgres_server: Postgres,
                                                        fleet_url: str, opskit: Any) -> None:
    """libpq quotes the token it cannot decode, here the password: the error is masked."""
    pw = postgres_server.password + "%zz"
    a = make_host(tmp_path, "alpha", f"postgresql://opskit:{pw}@127.0.0.1:{postgres_server.port}/db")
    r = opskit("--config", str(a.config), "journal", "sync")
    assert r.returncode == 1 and "percent-encoded" in r.stderr, r
    assert pw not in r.stdout + r.stderr
    ev = a.journal().query(type_prefix="fleet.")
    assert ev and pw not in json.dumps(ev[0].data)


def test_a_database_that_stops_answering_is_cut_at_the_deadline_and_nothing_is_lost(
        tmp_path: Path, postgres_server: Postgres, fleet_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled backend (SIGSTOP: its kernel still ACKs, so TCP never times out and the
    server's statement_timeout never fires) holds an append only until this side's deadline."""
    import signal
    import time

    j = migrated(make_host(tmp_path, "a", fleet_url)).journal()
    j.append("job.ok", "svc", {"i": 0})
    assert j.fleet is not None
    with j.fleet.using() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend = int(cur.fetchone()[0])
    monkeypatch.setattr(fleet_mod, "DEADLINE", 1.0)
    os.kill(backend, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert j.append("job.ok", "svc", {"i": 1}).id == 2
        assert time.monotonic() - started < 8  # the deadline (1 s here), not forever
    finally:
        os.kill(backend, signal.SIGCONT)
    # the stalled connection was cut and the append's forward went through on a new one
    assert [r[0] for r in fleet_rows(postgres_server, fleet_url, "SELECT local_id FROM events ORDER BY id")] == [1, 2]


def test_a_host_without_psycopg_keeps_working_and_names_the_extra(tmp_path: Path, fleet_url: str) -> None:
    """`pip install .` without the postgres extra, and a config that names a fleet: the host
    works as a single host, and every command that says so names what to install."""
    hidden = tmp_path / "hidden"
    (hidden / "psycopg").mkdir(parents=True)
    (hidden / "psycopg" / "__init__.py").write_text('raise ImportError("No module named \'psycopg\'")\n')
    a = make_host(tmp_path, "alpha", fleet_url)
    env = {**os.environ, "PYTHONPATH": str(hidden)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "opskit", "--config", str(a.config), *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    r = run("journal", "sync")
    assert r.returncode == 1 and "pip install 'opskit[postgres]'" in r.stderr, r
    r = run("status")
    assert r.returncode == 1 and "fleet journal unreachable" in r.stdout and "Traceback" not in r.stderr, r
    r = run("events")
    assert r.returncode == 0 and "fleet.unreachable" in r.stdout, r


def test_cron_check_tells_the_owner_once_per_outage(tmp_path: Path, postgres_server: Postgres,
                                                    fleet_url: str) -> None:
    from opskit.jobs.cron_check import cron_check

    a = migrated(make_host(tmp_path, "alpha", fleet_url))
    settings = config.load_file(a.config)
    sent: list[dict[str, Any]] = []

    def notifier(_s: Any, _j: Any, message: str, **kw: Any) -> None:
        sent.append({"message": message, **kw})

    j = Journal(settings.state_dir, fleet=settings.fleet)
    postgres_server.stop()
    try:
        cron_check(settings, j, notifier=notifier, crontab_text=None)
        cron_check(settings, j, notifier=notifier, crontab_text=None)
    finally:
        postgres_server.start()
    assert [(m["title"], m["level"]) for m in sent] == [("alpha: fleet journal unreachable", "warn")]
    assert sent[0]["event_id"] == j.query(types=("fleet.unreachable",))[0].id
    assert postgres_server.password not in sent[0]["message"]
    cron_check(settings, j, notifier=notifier, crontab_text=None)  # back: the record is cleared
    assert j.kv_get("fleet", "unreachable") is None and len(sent) == 1
