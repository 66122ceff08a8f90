"""Benchmark: the fleet journal on PostgreSQL beside the plain SQLite journal.

1. Appends per second from 4 writer processes of one host: into the fleet (each append
   written to the host's SQLite journal, then forwarded to PostgreSQL) and into a plain
   SQLite journal (journal_bench.many_writers), paired round by round. Every event is
   counted in the database afterwards: a lost or doubled forward fails the run.
2. `opskit events --limit 50 --json` at 1,000,000 events: the fleet's (PostgreSQL, three
   hosts' rows made with one INSERT … SELECT generate_series, not through opskit) beside
   SQLite's (journal_bench.big_journal), as the whole command and the in-process query the
   target is about; and the fleet part of `opskit status` (fleet_read.hosts) at that size.

Targets: ≥ 2,000 appends/s from 4 writers; the query ≤ 100 ms. The PostgreSQL server is the
tests' (tests/support/postgres.py): Debian's server binaries in a temp dir, fsync off.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OPSKIT, ROOT, Result, Stats, bench_env, interleave, run_writers, wall_ms  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
import journal_bench  # noqa: E402

WRITER = """
import sys, time
sys.path.insert(0, {src!r})
from opskit.base import config
from opskit.storage.journal import Journal
cfg, n, go = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
from pathlib import Path
s = config.load_file(Path(cfg))
j = Journal(s.state_dir, fleet=s.fleet)
time.sleep(max(0.0, go - time.time()))
t0 = time.time()
for i in range(n):
    j.append("bench.write", "svc", {{"i": i}})
print(t0, time.time())
"""


def _config(root: Path, url: str, host: str) -> Path:
    state = root / f"state-{host}"
    cfg = root / f"{host}.toml"
    cfg.write_text(f'[opskit]\nstate_dir = "{state}"\njournal = "{url}"\nhost = "{host}"\n')
    return cfg


def _migrate(cfg: Path) -> None:
    from opskit.base import config
    from opskit.storage import fleet

    s = config.load_file(cfg)
    assert s.fleet is not None
    fleet.migrate(fleet.Fleet(s.fleet, s.state_dir))


def fleet_writers(pg: object, procs: int, n: int) -> float:
    """Aggregate appends/s of `procs` processes of one fleet host, each event forwarded."""
    from tests.support.postgres import Postgres

    assert isinstance(pg, Postgres)
    db = pg.database()
    url = pg.url(db)
    try:
        with tempfile.TemporaryDirectory(prefix="opskit-bench-f-") as t:
            cfg = _config(Path(t), url, "bench")
            _migrate(cfg)
            from opskit.base import config
            from opskit.storage.journal import Journal

            s = config.load_file(cfg)
            Journal(s.state_dir, fleet=s.fleet).close()
            go = time.time() + 1.5
            code = WRITER.format(src=str(ROOT / "src"))
            spans = run_writers(code, [str(cfg), str(n), str(go)], procs)
            end = max(b for _, b in spans)
            j = Journal(s.state_dir, fleet=s.fleet)
            assert j.fleet is not None
            j.fleet.sync(j, force=True)  # what the last appends left for the next one (none, normally)
            count = int(pg.sql("SELECT COUNT(*) FROM events WHERE type = 'bench.write'", db).strip())
            if count != procs * n:
                raise RuntimeError(f"{procs * n} appends, {count} events in the fleet: lost or doubled forwards")
            j.close()
        return procs * n / (end - min(a for a, _ in spans))
    finally:
        pg.drop(db)


FILL = """
INSERT INTO events (host, local_id, ts, ts_precise, type, service, chain, sha, data)
SELECT 'host' || (g % 3), g / 3 + 1,
       to_char(timestamp '2026-01-01' + g * interval '1 second', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), NULL,
       (ARRAY['push.received','deploy.start','deploy.complete','health.pass','health.fail','rollback.start',
              'rollback.complete','notify.sent','drift.detected','job.ok','job.start'])[1 + g % 11],
       'svc' || lpad(((g / 7) % 20)::text, 2, '0'), NULL, repeat('4d62098a', 5),
       '{"sha": "4d62098a4d62098a4d62098a4d62098a4d62098a", "step": "deploy", "duration": 1.5}'
FROM generate_series(0, {N} - 1) AS g;
INSERT INTO hosts (host, seen, forwarded) SELECT 'host' || h, '2026-01-12T13:46:39Z', {N} / 3 FROM generate_series(0, 2) h;
ANALYZE events;
"""


def run(rounds: int = 5, warmup: int = 1, size: int = 1_000_000, appends: int = 1500) -> Result:
    from opskit.base import config
    from opskit.storage import fleet_read
    from opskit.storage.journal import Journal
    from tests.support.postgres import Postgres

    res = Result()
    b = "fleet journal"
    pg = Postgres()
    pg.init()
    try:
        per = appends // 4
        xs = interleave({"fleet": lambda: fleet_writers(pg, 4, per),
                         "sqlite": lambda: journal_bench.many_writers(4, per)}, rounds, warmup)
        s = Stats.of(xs["fleet"])
        res.add(b, f"appends/s, 4 writer processes, fleet (SQLite + forward to PostgreSQL, {4 * per} appends)",
                s, "/s", "≥ 2,000/s", s.median >= 2000, note="every event counted in PostgreSQL")
        res.add(b, f"appends/s, 4 writer processes, plain SQLite ({4 * per} appends)", Stats.of(xs["sqlite"]), "/s")
        ratio = [f / q for f, q in zip(xs["fleet"], xs["sqlite"], strict=True)]
        res.add(b, "fleet / SQLite appends, paired per round", Stats.of(ratio), "×")

        db = pg.database()
        with tempfile.TemporaryDirectory(prefix="opskit-bench-fq-") as t:
            cfg = _config(Path(t), pg.url(db), "host0")
            _migrate(cfg)
            t0 = time.perf_counter()
            pg.sql(FILL.replace("{N}", str(size)), db)
            res.extra.append(f"fleet journal: {size:,} events generated in PostgreSQL with INSERT … SELECT "
                             f"generate_series in {time.perf_counter() - t0:.1f} s (3 hosts, 20 services).")
            s_cfg = config.load_file(cfg)
            fj = Journal(s_cfg.state_dir, fleet=s_cfg.fleet)
            assert fj.fleet is not None
            fleet = fj.fleet
            env = bench_env(Path(t))
            sqlite_state = journal_bench.big_journal(size)
            sq = Journal(sqlite_state)
            sq_env = {**env, "OPSKIT_STATE_DIR": str(sqlite_state)}

            def pg_query() -> float:
                t0 = time.perf_counter()
                found = fleet_read.query(fleet, fj, limit=50)
                ms = (time.perf_counter() - t0) * 1000
                assert len(found) == 50
                return ms

            def sq_query() -> float:
                t0 = time.perf_counter()
                found = sq.query(limit=50)
                ms = (time.perf_counter() - t0) * 1000
                assert len(found) == 50
                return ms

            def pg_hosts() -> float:
                t0 = time.perf_counter()
                found = fleet_read.hosts(fleet, fj)
                ms = (time.perf_counter() - t0) * 1000
                assert len(found) == 3
                return ms

            argv = [*OPSKIT, "events", "--limit", "50", "--json"]
            q = interleave({
                "pg_cli": lambda: wall_ms([*OPSKIT, "--config", str(cfg), "events", "--limit", "50", "--json"],
                                          env=env, check=True),
                "sq_cli": lambda: wall_ms(argv, env=sq_env, check=True),
                "pg": pg_query, "sq": sq_query, "hosts": pg_hosts}, rounds, warmup)
            label = f"{size:,}"
            res.add(b, f"`opskit events --limit 50 --json`, {label} events, fleet (whole command)",
                    Stats.of(q["pg_cli"]), "ms")
            res.add(b, f"`opskit events --limit 50 --json`, {label} events, SQLite (whole command)",
                    Stats.of(q["sq_cli"]), "ms")
            s = Stats.of(q["pg"])
            res.add(b, f"fleet_read.query(limit=50), {label} events, PostgreSQL (in process)", s, "ms",
                    "≤ 100 ms", s.median <= 100)
            res.add(b, f"Journal.query(limit=50), {label} events, SQLite (in process)", Stats.of(q["sq"]), "ms")
            res.add(b, f"fleet_read.hosts (status's fleet part), {label} events", Stats.of(q["hosts"]), "ms")
            fj.close()
            sq.close()
            fleet.close()
        pg.drop(db)
    finally:
        pg.destroy()
    return res


if __name__ == "__main__":
    from report import render_table

    r = run(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print(render_table(r.rows))
    print("\n".join(r.extra))
