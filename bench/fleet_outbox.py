"""Benchmark: the fleet's shared outbox (storage/fleet_outbox.py) on a real PostgreSQL (the
test suite's server, tests/support/postgres.py), flushed by one host and by three at once.

Each round queues N messages over six channels in the shared outbox, off the clock, then
times real `opskit notify --flush` processes — one host, or three hosts (their own configs,
state dirs and host names) started together — until all have exited: messages per second
for the whole job. The local Discord stand-in counts what arrived and the database must
show every row delivered: a round that delivers fewer, or any twice, is an error, not a
figure. Target: ≥ 200 messages/s with three flushers.

    .venv/bin/python bench/fleet_outbox.py [--quick]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OPSKIT, ROOT, Result, Stats, bench_env, interleave  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

CHANNELS = [f"c{i}" for i in range(6)]


def run(rounds: int = 5, warmup: int = 1, n: int = 1000) -> Result:
    from opskit.base import config
    from opskit.base.clock import FakeClock
    from opskit.standins.receiver import Receiver
    from opskit.storage import fleet, fleet_outbox
    from opskit.storage.journal import Journal
    from tests.support.fleet import fleet_rows, make_host
    from tests.support.notify import channel_toml

    res = Result()
    pg = None
    try:
        from tests.support.postgres import Postgres

        pg = Postgres()
        pg.init()
    except BaseException as e:  # pytest.skip: no server binaries or no psycopg here
        res.extra.append(f"fleet outbox: not measured ({e})")
        return res
    try:
        with tempfile.TemporaryDirectory(prefix="opskit-bench-fleet-outbox-") as t, \
                Receiver.start() as rx:
            tmp = Path(t)
            env = bench_env(tmp)
            url = pg.url(pg.database())
            chans = "".join(channel_toml(c, "discord", rx.url("discord", c), timeout=5, retry_for=5)
                            for c in CHANNELS)
            hosts = [make_host(tmp, name, url, chans) for name in ("a", "b", "c")]
            settings = config.load_file(hosts[0].config)
            assert settings.fleet is not None
            fleet.migrate(fleet.Fleet(settings.fleet, settings.state_dir))

            def queue() -> None:
                clock = FakeClock()
                j = Journal(settings.state_dir, clock, fleet=settings.fleet)
                box = fleet_outbox.box_for(j)
                try:
                    for i in range(n):
                        box.enqueue(j, clock, CHANNELS[i % len(CHANNELS)], level="error",
                                    title=f"deploy failed #{i}", message=f"health gate failed (message {i})",
                                    service="web", event_id=None)
                finally:
                    box.close()
                    j.close()

            def flush(k: int) -> float:
                queue()
                rx.clear()
                t0 = time.perf_counter()
                procs = [subprocess.Popen([*OPSKIT, "--config", str(h.config), "notify", "--flush", "--json"],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                         for h in hosts[:k]]
                for p in procs:
                    p.wait(300)
                took = time.perf_counter() - t0
                got = len(rx.wait_for(n, timeout=10))
                left = fleet_rows(pg, url, "SELECT COUNT(*) FROM outbox WHERE status <> 'delivered'")[0][0]
                if got != n or left:
                    raise RuntimeError(f"{k} flusher(s) delivered {got} of {n}, {left} not delivered")
                pg.sql("DELETE FROM outbox", url.rsplit("/", 1)[1])
                return n / took

            xs = interleave({"one": lambda: flush(1), "three": lambda: flush(3)}, rounds, warmup)
    finally:
        pg.destroy()
    what = f"`opskit notify --flush`, {n:,} queued over {len(CHANNELS)} channels in the shared outbox → local Discord stand-in"
    res.add("fleet outbox", f"{what}, one host", Stats.of(xs["one"]), "msg/s", note="each delivered once, checked")
    three = Stats.of(xs["three"])
    res.add("fleet outbox", f"{what}, three hosts flushing at once", three, "msg/s", target="≥ 200 msg/s",
            met=three.median >= 200, note="each delivered once, checked")
    return res


if __name__ == "__main__":
    from report import render_table

    quick = "--quick" in sys.argv[1:]
    result = run(rounds=3 if quick else 5, warmup=0 if quick else 1, n=300 if quick else 1000)
    print(render_table(result.rows))
    for line in result.extra:
        print(line)
