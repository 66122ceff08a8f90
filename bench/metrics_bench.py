"""Benchmark 9: `opskit metrics` over a journal of 1,000,000 events (target ≤ 1 s).

The journal is journal_bench's (20 services, 11 event types, a quarter of them deploys and
rollbacks counted by service and result), cached apart (CACHE/metrics-N) because opening it
here adds the events_type_service index: a one-time migration, measured once (n=1) on a fresh
copy. Reported: the in-process rendering (`views.metrics.render`: every query and
prometheus_client's exposition) the target is about, and the whole command as cron runs it
(`opskit metrics --textfile PATH`: interpreter, Typer, config, journal open, write, rename).
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OPSKIT, ROOT, Result, Stats, bench_env, interleave, wall_ms  # noqa: E402
from journal_bench import SERVICES, big_journal  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))


def _config(tmp: Path, textfile: Path) -> Path:
    lines = [f'[opskit]\nmetrics_textfile = "{textfile}"\n']
    for s in SERVICES:
        lines.append(f'[service.{s}]\nrepo = "{tmp}/repos/{s}.git"\nworktree = "{tmp}/srv/{s}"\n')
    cfg = tmp / "opskit.toml"
    cfg.write_text("\n".join(lines))
    return cfg


def migration_seconds(state: Path) -> float:
    """Opening a journal of this size that lacks the index: the index is built once."""
    from opskit.storage.journal import Journal

    with tempfile.TemporaryDirectory(prefix="opskit-bench-mig-") as t:
        shutil.copy(state / "journal.db", Path(t) / "journal.db")
        con = sqlite3.connect(Path(t) / "journal.db")
        con.execute("DROP INDEX IF EXISTS events_type_service")
        con.close()
        t0 = time.perf_counter()
        Journal(Path(t)).close()
        return time.perf_counter() - t0


def run(rounds: int = 5, warmup: int = 1, n: int = 1_000_000) -> Result:
    from opskit.base import config
    from opskit.storage.journal import Journal
    from opskit.views.metrics import render

    res = Result()
    b = "9 metrics"
    state = big_journal(n, name="metrics")
    Journal(state).close()  # the index exists before anything is timed
    with tempfile.TemporaryDirectory(prefix="opskit-bench-m-") as t:
        tmp = Path(t)
        textfile = tmp / "textfile" / "opskit.prom"
        textfile.parent.mkdir()
        cfg = _config(tmp, textfile)
        env = bench_env(tmp)
        env["OPSKIT_STATE_DIR"] = str(state)
        settings = config.load_file(cfg)
        j = Journal(state)

        def in_process() -> float:
            t0 = time.perf_counter()
            text = render(settings, j)
            ms = (time.perf_counter() - t0) * 1000
            assert "opskit_deploys_total" in text
            return ms

        def counts(how: str) -> float:
            from opskit.storage.stats import COUNTED

            t0 = time.perf_counter()
            j.conn.execute(f"SELECT type, service, COUNT(*) FROM events {how} WHERE type IN (?, ?, ?, ?) "
                           "GROUP BY type, service", COUNTED).fetchall()
            return (time.perf_counter() - t0) * 1000

        argv = [*OPSKIT, "--config", str(cfg), "metrics", "--textfile", str(textfile)]
        q = interleave({"render": in_process, "cli": lambda: wall_ms(argv, env=env, check=True),
                        "indexed": lambda: counts("INDEXED BY events_type_service"),
                        "scan": lambda: counts("NOT INDEXED")}, rounds, warmup)
        j.close()
        label = f"{n:,}"
        s = Stats.of(q["render"])
        res.add(b, f"metrics rendered in process (every query + prometheus_client), {label} events", s, "ms",
                "≤ 1,000 ms", s.median <= 1000)
        res.add(b, f"`opskit metrics --textfile PATH`, {label} events (whole command)", Stats.of(q["cli"]), "ms")
        res.add(b, f"deploys/rollbacks by service and result, {label} events: on the index", Stats.of(q["indexed"]),
                "ms")
        res.add(b, f"the same count as a full table scan (no index), {label} events", Stats.of(q["scan"]), "ms",
                note="why the index")
    mig = migration_seconds(state)
    res.add(b, f"one-time migration: building events_type_service on {label} events", Stats.of([mig * 1000]), "ms",
            note="n=1, at the first open after upgrading")
    return res


if __name__ == "__main__":
    from report import render_table

    print(render_table(run().rows))
