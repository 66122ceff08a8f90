"""Benchmark 4: the journal. Appends per second (1 writer; 4 writer processes at once) and
`opskit events --service S --limit 50 --json` over 100,000 and 1,000,000 events.

Targets: ≥ 5,000 appends/s for one writer; the query ≤ 100 ms at 1,000,000 events. The query
is reported twice: the whole command as an operator runs it (interpreter, Typer, config,
open, query, print) and the in-process `Journal.query` the target is about.

The big journals are generated once with one executemany transaction and cached under
CACHE (several hundred MB for 1,000,000 events; `rm -r` it to rebuild).
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OPSKIT, ROOT, Result, Stats, bench_env, interleave, run_writers, wall_ms  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
CACHE = Path(tempfile.gettempdir()) / "opskit-bench-cache"
SERVICES = [f"svc{i:02d}" for i in range(20)]
TYPES = ["push.received", "deploy.start", "deploy.complete", "health.pass", "health.fail", "rollback.start",
         "rollback.complete", "notify.sent", "drift.detected", "job.ok", "job.start"]
WRITER = """
import sys, time
sys.path.insert(0, {src!r})
from opskit.storage.journal import Journal
state, n, go = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
j = Journal(state)
time.sleep(max(0.0, go - time.time()))
t0 = time.time()
for i in range(n):
    j.append("bench.write", "svc", {{"i": i}})
print(t0, time.time())
"""


def one_writer(n: int) -> float:
    """Appends/s of n appends, each its own transaction, in a fresh journal."""
    from opskit.storage.journal import Journal

    with tempfile.TemporaryDirectory(prefix="opskit-bench-j-") as t:
        j = Journal(Path(t))
        j.append("bench.warm", "svc", {})
        t0 = time.perf_counter()
        for i in range(n):
            j.append("deploy.complete", "svc", {"i": i, "sha": "0" * 40, "duration": 1.25})
        rate = n / (time.perf_counter() - t0)
        j.close()
    return rate


def many_writers(procs: int, n: int) -> float:
    """Aggregate appends/s of `procs` processes appending n each, started together."""
    with tempfile.TemporaryDirectory(prefix="opskit-bench-j-") as t:
        from opskit.storage.journal import Journal

        Journal(Path(t)).close()  # schema and WAL set up before the race
        go = time.time() + 1.0  # every interpreter is up and the journal open by then
        code = WRITER.format(src=str(ROOT / "src"))
        spans = run_writers(code, [t, str(n), str(go)], procs)
        count = sqlite3.connect(Path(t) / "journal.db").execute(
            "SELECT COUNT(*) FROM events WHERE type = 'bench.write'").fetchone()[0]
        if count != procs * n:
            raise RuntimeError(f"{procs * n} appends, {count} events: lost writes")
    return procs * n / (max(b for _, b in spans) - min(a for a, _ in spans))


def big_journal(n: int, name: str = "journal") -> Path:
    """A state dir whose journal holds n events over 20 services (cached as CACHE/NAME-n)."""
    from opskit.storage.journal import Journal

    state = CACHE / f"{name}-{n}"
    done = state / "complete"
    if done.exists():
        return state
    state.mkdir(parents=True, exist_ok=True)
    (state / "journal.db").unlink(missing_ok=True)
    Journal(state).close()
    rnd = random.Random(n)
    data = json.dumps({"sha": "4d62098a" * 5, "previous": "9c1e" * 10, "step": "deploy", "duration": 1.5,
                       "tail": "restarted\nlistening on 127.0.0.1"})
    con = sqlite3.connect(state / "journal.db")
    t0 = time.time() - n
    rows = ((time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + i)), rnd.choice(TYPES),
             rnd.choice(SERVICES), None, "4d62098a" * 5, data) for i in range(n))
    with con:
        con.executemany("INSERT INTO events (ts, type, service, chain, sha, data) VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.close()
    done.write_text("ok\n")
    return state


def run(rounds: int = 5, warmup: int = 1, sizes: tuple[int, ...] = (100_000, 1_000_000),
        appends: int = 3000) -> Result:
    from opskit.storage.journal import Journal

    res = Result()
    b = "4 journal"
    xs = interleave({"one": lambda: one_writer(appends), "four": lambda: many_writers(4, appends // 2)},
                    rounds, warmup)
    s = Stats.of(xs["one"])
    res.add(b, f"appends/s, 1 writer ({appends} appends, one tx each)", s, "/s", "≥ 5,000/s", s.median >= 5000)
    res.add(b, f"appends/s, 4 writer processes together ({4 * (appends // 2)} appends)", Stats.of(xs["four"]), "/s",
            note="all events present")
    with tempfile.TemporaryDirectory(prefix="opskit-bench-q-") as t:
        env = bench_env(Path(t))
        for n in sizes:
            state = big_journal(n)
            env["OPSKIT_STATE_DIR"] = str(state)
            argv = [*OPSKIT, "events", "--service", "svc07", "--limit", "50", "--json"]
            j = Journal(state)

            def in_process(j: Journal = j) -> float:
                t0 = time.perf_counter()
                found = j.query(service="svc07", limit=50)
                ms = (time.perf_counter() - t0) * 1000
                assert len(found) == 50
                return ms

            q = interleave({"cli": lambda a=argv: wall_ms(a, env=env, check=True), "query": in_process}, rounds, warmup)
            j.close()
            label = f"{n:,}"
            res.add(b, f"`opskit events --service S --limit 50 --json`, {label} events (whole command)",
                    Stats.of(q["cli"]), "ms")
            s = Stats.of(q["query"])
            res.add(b, f"Journal.query(service=S, limit=50), {label} events (in process)", s, "ms",
                    "≤ 100 ms" if n >= 1_000_000 else "", s.median <= 100 if n >= 1_000_000 else None)
    return res


if __name__ == "__main__":
    from report import render_table

    print(render_table(run().rows))
