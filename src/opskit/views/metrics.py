"""`opskit metrics`: every number `opskit status` shows, for Prometheus, from the journal only.

The exposition format is prometheus_client's (generate_latest over a CollectorRegistry), never
a hand-written one. The textfile for node_exporter's textfile collector is written whole to a
temp file in its folder and renamed over the old one (base/atomic.py), so the collector never
reads half a file; as root, a folder another account can change is refused.

prometheus_client is imported inside the functions that need it: every other command's
start-up stays without it (bench/startup.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opskit.base.atomic import replace_file
from opskit.base.clock import SYSTEM, Clock, parse_iso
from opskit.base.config import Settings
from opskit.base.errors import UsageError
from opskit.base.safety import writable_by_others
from opskit.jobs.cron_check import cron_check_health
from opskit.jobs.record import JOB
from opskit.notify import broken_channels, ping
from opskit.storage import outbox, stats
from opskit.storage.journal import Journal
from opskit.views.status import attention, watch_data

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

PREFIX = "opskit"


def _ts(value: Any) -> float | None:
    """An ISO timestamp as Unix seconds (what Prometheus's *_timestamp_seconds hold)."""
    if not value:
        return None
    try:
        return parse_iso(str(value)).timestamp()
    except ValueError:
        return None


@dataclass
class _Family:
    kind: str  # gauge | counter
    name: str
    doc: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]]


def families(settings: Settings, journal: Journal, clock: Clock = SYSTEM) -> list[_Family]:
    """The metrics as plain data (name, labels, values): what collect() hands prometheus_client."""
    out: list[_Family] = []

    def fam(kind: str, name: str, doc: str, *labels: str) -> list[tuple[tuple[str, ...], float]]:
        f = _Family(kind, f"{PREFIX}_{name}", doc, labels, [])
        out.append(f)
        return f.samples

    data = watch_data(settings, journal, clock)  # status's own reading, journal only
    services = sorted(settings.services)

    deploys = fam("counter", "deploys", "Deploys finished, by service and result (complete | fail).",
                  "service", "result")
    rollbacks = fam("counter", "rollbacks", "Rollbacks (auto-reverts) finished, by service and result.",
                    "service", "result")
    counted = {(t, s): n for t, s, n in stats.counts_by_service(journal)}
    seen = sorted({s for _, s in counted if s} | set(services))
    for svc in seen:
        for result in ("complete", "fail"):
            deploys.append(((svc, result), float(counted.get((f"deploy.{result}", svc), 0))))
            rollbacks.append(((svc, result), float(counted.get((f"rollback.{result}", svc), 0))))

    verdict = fam("gauge", "last_verdict_healthy", "The last deploy verdict: 1 healthy, 0 not "
                  "(failed, reverted, interrupted), by service and status.", "service", "status")
    verdict_ts = fam("gauge", "last_verdict_timestamp_seconds", "When the last verdict was reached.",
                     "service")
    verdict_commit = fam("gauge", "last_verdict_commit_info", "Always 1: the commit of the last verdict "
                         "(after a revert, the revert commit, live again), by service.", "service", "commit")
    frozen = fam("gauge", "service_frozen", "1 while deploys of the service are refused.", "service")
    interrupted = fam("gauge", "deploy_interrupted", "1 while a deploy or rollback is left open by a dead "
                      "process (the next cron-check finishes it).", "service")
    for s in data["services"]:
        v = s.get("last_verdict")
        if v:
            verdict.append(((s["name"], str(v["status"])), 1.0 if v["status"] == "healthy" else 0.0))
            if v.get("sha"):
                verdict_commit.append(((s["name"], str(v["sha"])), 1.0))
            t = _ts(v.get("when"))
            if t is not None:
                verdict_ts.append(((s["name"],), t))
        frozen.append(((s["name"],), 1.0 if s.get("frozen") else 0.0))
        p = s.get("in_progress")
        interrupted.append(((s["name"],), 1.0 if p and not p["alive"] else 0.0))

    quarantined = fam("gauge", "quarantined_trees", "Trees refused after an auto-revert, not released.",
                      "service")
    q = stats.quarantined_by_service(journal)
    for svc in sorted(set(q) | set(services)):
        quarantined.append(((svc,), float(q.get(svc, 0))))

    drift = fam("gauge", "drift_files", "Files found drifted (modified, staged, deleted, untracked, "
                "conflict) at the last drift-scan (0: clean).", "service")
    findings = fam("gauge", "drift_findings", "Everything the last drift-scan found (files, a moved HEAD, "
                   "missing hooks; 0: clean).", "service")
    for svc in services:
        state = journal.kv_get("drift", svc) or {}
        drift.append(((svc,), float(state.get("files", state.get("count")) or 0)))
        findings.append(((svc,), float(state.get("count") or 0)))

    depth = fam("gauge", "outbox_messages", "Notifications in the outbox, by channel and status.",
                "channel", "status")
    for channel, counts in sorted(outbox.summary(journal).items()):
        for status, n in sorted(counts.items()):
            depth.append(((channel, status), float(n)))
    oldest = fam("gauge", "outbox_oldest_age_seconds", "Age of the oldest notification still waiting, "
                 "by channel (absent: nothing waits).", "channel")
    now = clock.now()
    for channel, (_, created) in outbox.waiting(journal).items():
        oldest.append(((channel,), max(0.0, (now - parse_iso(created)).total_seconds())))
    broken = fam("gauge", "channel_broken", "1 while a channel's endpoint refuses for good.", "channel")
    for channel, info in sorted(broken_channels(journal).items()):
        broken.append(((channel,), 1.0 if info.get("broken") else 0.0))

    ok_ts = fam("gauge", "job_last_success_timestamp_seconds", "When the job's last passing run ended.", "job")
    fail_ts = fam("gauge", "job_last_failure_timestamp_seconds", "When the job's last failing run ended.", "job")
    streak = fam("gauge", "job_failure_streak", "Consecutive failed runs of the job (0: it passes).", "job")
    for name, st in sorted(journal.kv_all(JOB).items()):
        last_ok = st.get("last_ok") or (st.get("last_end") if st.get("last_status") == "ok" else None)
        last_fail = st.get("last_fail") or (st.get("last_end") if st.get("last_status") == "fail" else None)
        for samples, value in ((ok_ts, _ts(last_ok)), (fail_ts, _ts(last_fail))):
            if value is not None:
                samples.append(((name,), value))
        streak.append(((name,), float(st.get("streak") or 0)))
    missed = fam("gauge", "job_missed", "1 while cron-check has a missed run of the job open.", "job")
    jobs_missed = data.get("jobs_missed")
    for name in sorted(jobs_missed if isinstance(jobs_missed, dict) and "error" not in jobs_missed else {}):
        missed.append(((name,), 1.0))

    cc = cron_check_health(journal, settings, clock)
    cc_ts = fam("gauge", "cron_check_last_run_timestamp_seconds", "When cron-check last ran.")
    t = _ts(cc.get("last_run"))
    if t is not None:
        cc_ts.append(((), t))
    fam("gauge", "cron_check_overdue", "1 when cron-check is not running (late past its grace).").append(
        ((), 1.0 if cc.get("overdue") else 0.0))

    hb = (journal.kv_get(ping.HEARTBEAT, "state") or {}) if settings.monitor.heartbeat is not None else {}
    hb_ts = fam("gauge", "heartbeat_last_success_timestamp_seconds",
                "When a heartbeat ping last reached the external monitor.")
    t = _ts(hb.get("last_success"))
    if t is not None:
        hb_ts.append(((), t))
    fam("gauge", "heartbeat_failing", "1 while the heartbeat ping fails.").append(
        ((), 1.0 if hb.get("failing") else 0.0))

    behind = fam("gauge", "reaction_behind_events", "Events a [[reaction]] has still to run for "
                 "(status names it past 100).", "reaction")
    failing = fam("gauge", "reaction_failing", "1 while a reaction's run fails and waits for its retry.",
                  "reaction")
    gave_up = fam("counter", "reaction_gave_up", "Events a reaction gave up on after its retries.", "reaction")
    rows = data.get("reactions")
    for row in rows if isinstance(rows, list) else []:
        name = str(row["name"])
        behind.append(((name,), float(row.get("behind") or 0)))
        failing.append(((name,), 1.0 if row.get("attempts") else 0.0))
        gave_up.append(((name,), float(row.get("gave_up") or 0)))

    data["heartbeat"] = hb
    fam("gauge", "attention_items", "What `opskit status` lists under needs attention (it exits 1 when "
        "this is not 0).").append(((), float(len(attention(data)))))
    pending = data.get("fallback_pending")
    fam("gauge", "fallback_pending", "Records waiting in the fallback log, outside the journal.").append(
        ((), float(pending) if isinstance(pending, int) else 0.0))
    fam("gauge", "journal_events", "Events in the journal (the highest event id).").append(
        ((), float(stats.event_count(journal))))
    return out


def registry(settings: Settings, journal: Journal, clock: Clock = SYSTEM) -> CollectorRegistry:
    """A fresh CollectorRegistry holding the metrics (not the process's default registry)."""
    from prometheus_client import CollectorRegistry  # only `opskit metrics` pays its import
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # likewise

    built = families(settings, journal, clock)

    class _Collector:
        def collect(self) -> list[Metric]:
            metrics: list[Metric] = []
            for f in built:
                m: Metric
                if f.kind == "counter":
                    m = CounterMetricFamily(f.name, f.doc, labels=list(f.labels))
                else:
                    m = GaugeMetricFamily(f.name, f.doc, labels=list(f.labels))
                for labels, value in f.samples:
                    m.add_metric(list(labels), value)
                metrics.append(m)
            return metrics

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector())  # a Collector is anything with collect()
    return reg


def render(settings: Settings, journal: Journal, clock: Clock = SYSTEM) -> str:
    """The text exposition format, as prometheus_client writes it."""
    from prometheus_client import generate_latest  # only `opskit metrics` pays its import

    return generate_latest(registry(settings, journal, clock)).decode("utf-8")


def write_textfile(path: Path, text: str) -> None:
    """Replace path with text atomically (temp file beside it, then rename): node_exporter's
    textfile collector reads the old file or the new one, never half. As root, a folder another
    account can change (a link, a foreign owner, group- or world-writable) is refused, exit 2."""
    folder = path.parent
    if not path.is_absolute() or not path.name.endswith(".prom"):
        raise UsageError(f"metrics textfile {path}: not an absolute path ending in .prom (the textfile "
                         "collector reads only *.prom); write e.g. /var/lib/node_exporter/textfile_collector/opskit.prom")
    if not folder.is_dir():
        raise UsageError(f"metrics textfile {path}: folder {folder} does not exist; create it "
                         "(node_exporter's --collector.textfile.directory) or fix the path")
    if os.geteuid() == 0:
        real = Path(os.path.realpath(folder))
        if real != folder:  # a link anywhere on the way: its real parents are what must be checked
            raise UsageError(f"refusing to write the metrics textfile as root: {folder} goes through a link "
                             f"(to {real}); write the real path instead")
        problem = writable_by_others(folder)
        if problem:
            raise UsageError(f"refusing to write the metrics textfile as root: {problem}; "
                             f"fix it: chown root {folder} && chmod go-w {folder}")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UsageError(f"metrics textfile {path} is a link or not a file; remove it (rm {path})")
    try:
        replace_file(path, text, mode=0o644)
    except OSError as e:
        raise UsageError(f"metrics textfile {path}: cannot write in {folder} ({e.strerror or e}); "
                         "fix the folder's permissions or the path") from None
