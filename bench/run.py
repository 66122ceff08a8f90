"""Run opskit's benchmarks and print one table (issue 6). Figures, never assertions.

    .venv/bin/python bench/run.py                 # all, ~5–10 min; prints the table
    .venv/bin/python bench/run.py --quick         # fewer rounds, smaller sizes, ~3 min
    .venv/bin/python bench/run.py --only drift    # one benchmark (repeatable)
    .venv/bin/python bench/run.py --write         # also rewrite the table in bench/README.md
    .venv/bin/python bench/run.py --full          # also wait out the seed's real 60 s window once

Names: hook, recovery, drift, journal, startup, outbox, tap, sandbox, reactions.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import Result, load_avg, machine  # noqa: E402
from report import render_table, splice  # noqa: E402

NAMES = ("hook", "recovery", "drift", "journal", "startup", "outbox", "tap", "sandbox", "metrics", "reactions", "fleet",
         "fleet-outbox", "fleet-scale")


def plan(quick: bool, full: bool) -> dict[str, Callable[[], Result]]:
    import drift_scale
    import fleet_journal
    import fleet_outbox
    import fleet_scale
    import hook_commit
    import journal_bench
    import metrics_bench
    import outbox_flush
    import reaction_latency
    import recovery
    import sandbox_step
    import startup
    import tap_latency

    if quick:
        return {
            "hook": lambda: hook_commit.run(rounds=7, warmup=1),
            "recovery": lambda: recovery.run(rounds=1, full=full),
            "drift": lambda: drift_scale.run(rounds=5, warmup=1, scales=(10, 100)),
            "journal": lambda: journal_bench.run(rounds=5, warmup=1, sizes=(100_000,), appends=1500),
            "startup": lambda: startup.run(rounds=7, warmup=1),
            "outbox": lambda: outbox_flush.run(rounds=5, warmup=0, n=300),
            "tap": lambda: tap_latency.run(rounds=3, warmup=1),
            "sandbox": lambda: sandbox_step.run(rounds=7, warmup=1),
            "metrics": lambda: metrics_bench.run(rounds=5, warmup=1, n=100_000),
            "reactions": lambda: reaction_latency.run(rounds=3, warmup=0, latency_rounds=20, n=300),
            "fleet-scale": fleet_scale.run,
            "fleet": lambda: fleet_journal.run(rounds=3, warmup=0, size=100_000, appends=1000),
            "fleet-outbox": lambda: fleet_outbox.run(rounds=3, warmup=0, n=300),
        }
    return {
        "hook": lambda: hook_commit.run(rounds=15, warmup=2),
        "recovery": lambda: recovery.run(rounds=5, full=full),
        "drift": lambda: drift_scale.run(rounds=5, warmup=1),
        "journal": lambda: journal_bench.run(rounds=5, warmup=1),
        "startup": lambda: startup.run(rounds=10, warmup=2),
        "outbox": lambda: outbox_flush.run(rounds=5, warmup=1),
        "tap": lambda: tap_latency.run(rounds=7, warmup=1),
        "sandbox": lambda: sandbox_step.run(rounds=15, warmup=2),
        "metrics": lambda: metrics_bench.run(rounds=5, warmup=1),
        "reactions": lambda: reaction_latency.run(rounds=5, warmup=1, latency_rounds=25, n=1000),
        "fleet-scale": fleet_scale.run,
        "fleet": lambda: fleet_journal.run(rounds=5, warmup=1),
        "fleet-outbox": lambda: fleet_outbox.run(rounds=5, warmup=1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes (~3 min)")
    ap.add_argument("--only", action="append", choices=NAMES, metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(NAMES)}")
    ap.add_argument("--full", action="store_true", help="also run the seed's settings (60 s window) once")
    ap.add_argument("--write", action="store_true", help="rewrite the table in bench/README.md")
    args = ap.parse_args(argv)

    benches = plan(args.quick, args.full)
    chosen = args.only or list(NAMES)
    started = time.monotonic()
    loads = [load_avg()]
    rows, extra, failed = [], [], []
    for name in chosen:
        print(f"== {name} (load average {load_avg()})", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            res = benches[name]()
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            continue
        rows += res.rows
        extra += res.extra
        loads.append(load_avg())
        print(f"   {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    m = machine()
    cmd = "bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = [
        f"Command: `.venv/bin/python {cmd.strip()}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{time.monotonic() - started:.0f} s.",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']}, Linux {m['kernel']}, Python {m['python']}, "
        f"git {m['git']}.",
        "Load average (1/5/15 min) before each benchmark and at the end: " + " → ".join(loads) + ".",
    ]
    if failed:
        header.append(f"FAILED to run: {', '.join(failed)} (traceback on stderr).")
    block = "\n".join(header) + "\n\n" + render_table(rows) + ("\n\n" + "\n\n".join(extra) if extra else "")
    print(block)
    if args.write:
        readme = HERE / "README.md"
        readme.write_text(splice(readme.read_text() if readme.exists() else "", block))
        print(f"\n(written to {readme})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
