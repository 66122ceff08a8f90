"""Benchmark 6: `opskit notify --flush` delivering 1,000 queued notifications to a local
Discord stand-in (opskit.standins.receiver, loopback): messages per second.

Each round queues N rows the way a failed send leaves them (status 'queued', one channel),
off the clock, then times the real command. The receiver counts what arrived: a round that
delivers fewer than N is an error, not a figure.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OPSKIT, ROOT, Result, Stats, bench_env, interleave, wall_ms  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))


def _queue(db: Path, n: int) -> None:
    import sqlite3

    con = sqlite3.connect(db)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with con:
        con.executemany(
            "INSERT INTO outbox (channel, created, level, title, message, service, status, attempts, last_error) "
            "VALUES ('ops', ?, 'error', ?, ?, 'primerouter', 'queued', 1, 'connect timeout')",
            ((stamp, f"deploy failed #{i}", f"primerouter: health gate failed (message {i})\nConnection refused")
             for i in range(n)))
    con.close()


def run(rounds: int = 5, warmup: int = 1, n: int = 1000) -> Result:
    from opskit.standins.receiver import Receiver
    from opskit.storage.journal import Journal

    res = Result()
    with tempfile.TemporaryDirectory(prefix="opskit-bench-outbox-") as t, Receiver.start() as rx:
        tmp = Path(t)
        env = bench_env(tmp)
        state = tmp / "state"
        conf = tmp / "opskit.toml"
        conf.write_text(f'[opskit]\nstate_dir = {json.dumps(str(state))}\nnotify = ["ops"]\n\n'
                        f'[notify.ops]\ntype = "discord"\nurl = {json.dumps(rx.url("discord"))}\n'
                        'timeout = 5\nretry_for = 5\n')
        Journal(state).close()
        db = state / "journal.db"

        def flush() -> float:
            _queue(db, n)
            rx.clear()
            ms = wall_ms([*OPSKIT, "--config", str(conf), "notify", "--flush", "--json"], env=env)
            got = len(rx.wait_for(n, timeout=10))
            if got != n:
                raise RuntimeError(f"flush delivered {got} of {n}")
            return n / (ms / 1000)

        xs = interleave({"flush": flush}, rounds, warmup)
    s = Stats.of(xs["flush"])
    res.add("6 outbox", f"`opskit notify --flush`, {n:,} queued → local Discord stand-in (whole command)", s,
            "msg/s", note="each delivered once, checked")
    return res


if __name__ == "__main__":
    from report import render_table

    print(render_table(run().rows))
