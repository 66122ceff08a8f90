"""What every benchmark shares: timing, interleaved pairs, the row format, the machine.

Figures, never assertions (issue 6). Every figure is the median of N runs after a warm-up,
shown with its min and max. A comparison is never "median of A / median of B": A and B are
run alternately, round by round, and the ratio is taken within each round, so a burst of
load from another process on this shared machine hits both sides of one ratio alike.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
OPSKIT = [PY, "-m", "opskit"]


@dataclass(frozen=True)
class Stats:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, xs: Sequence[float]) -> Stats:
        return cls(statistics.median(xs), min(xs), max(xs), len(xs))


@dataclass
class Row:
    """One line of the table."""

    bench: str
    what: str
    stats: Stats | None
    unit: str
    target: str = ""
    met: bool | None = None  # None: no target for this figure
    note: str = ""

    def figure(self) -> str:
        if self.stats is None:
            return "—"
        s = self.stats
        if s.n == 1:
            return f"{fmt(s.median)} {self.unit}"
        return f"{fmt(s.median)} {self.unit} ({fmt(s.lo)}–{fmt(s.hi)}, n={s.n})"


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # free text printed under the table (importtime…)

    def add(self, *args: object, **kw: object) -> Row:
        row = Row(*args, **kw)  # type: ignore[arg-type]
        self.rows.append(row)
        return row


def fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def interleave(subjects: Mapping[str, Callable[[], float]], rounds: int, warmup: int = 1,
               settle: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Run every subject once per round, order rotated each round; each call returns its own
    measured figure (so it may exclude set-up). Warm-up rounds are thrown away."""
    names = list(subjects)
    out: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            x = subjects[name]()
            if i >= warmup:
                out[name].append(x)
            if settle is not None:
                settle()
    return out


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True) if y > 0]


def diffs(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def wall_ms(argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            check: bool = False) -> float:
    """Wall time of one command in ms, output discarded."""
    t = time.perf_counter()
    r = subprocess.run(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    ms = (time.perf_counter() - t) * 1000
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}")
    return ms


def child_peak_rss_mb(argv: Sequence[str], *, cwd: Path | None = None,
                      env: Mapping[str, str] | None = None) -> tuple[float, float, int]:
    """(wall ms, peak RSS of the child in MB, exit code), measured with wait4 on the one child.

    RUSAGE_CHILDREN would be the max over every child this process ever reaped; wait4 gives
    this child's own figure (the largest of it and its descendants it waited for)."""
    t = time.perf_counter()
    p = subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    ms = (time.perf_counter() - t) * 1000
    p.returncode = os.waitstatus_to_exitcode(status)
    return ms, ru.ru_maxrss / 1024, p.returncode


def load_avg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            cpu = m.group(1).strip()
    except OSError:
        pass
    git = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    mem = "?"
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if m:
            mem = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "memory": mem,
            "python": platform.python_version(), "git": git.replace("git version ", ""),
            "kernel": platform.release()}


def bench_env(tmp: Path) -> dict[str, str]:
    """A child environment that cannot touch the user's git config, journal or crontab."""
    gitconfig = tmp / "gitconfig"
    if not gitconfig.exists():
        gitconfig.write_text("[init]\n\tdefaultBranch = master\n[commit]\n\tgpgsign = false\n"
                             "[advice]\n\tdetachedHead = false\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "OPSKIT_", "PYTHON")) and k != "PRE_COMMIT_HOME"}
    env.update({
        "HOME": str(tmp), "GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
        "OPSKIT_STATE_DIR": str(tmp / "state"),
    })
    return env


def run_writers(code: str, args: Sequence[str], procs: int) -> list[tuple[float, float]]:
    """`procs` copies of `python -c code *args` started together and waited for; each one's
    (start, end) as it printed them (journal_bench's and fleet_journal's writer processes)."""
    ps = [subprocess.Popen([PY, "-c", code, *args], stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    spans = []
    for p in ps:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"writer exited {p.returncode}")
        a, b = out.split()
        spans.append((float(a), float(b)))
    return spans


def peak_rss_self_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
