"""Jobs: a cron job never fails or stops silently (run_job.py records, cron_check.py watches).

`run-job NAME -- CMD` journals every run of a job and notifies once per failure streak.
`cron-check` compares what ran with what the schedules say should have run, and reports
missed runs, runs stuck past max_runtime, last runs that failed, and runs whose run-job
vanished without a result (SIGKILL, OOM, power loss).

State (kv, shared with `opskit status`):
- scope "job", key NAME: runs (a counter), last_start/last_end/last_status/last_exit,
  last_ok/last_fail (when a run last passed / failed: opskit metrics),
  streak (consecutive failures), running {pid: {started, ticks}}, running_pid.
- scope "cron-check": "last" → {ts} (cron-check's own heartbeat), "installed" (set by
  `cron install`), "seen:NAME" (when a schedule was first watched), "incident:NAME" (an open
  missed incident), "overrun:NAME" (the run already reported as overrunning).

Overlap (a run starting while an earlier one still runs): the new run goes ahead and the
overlap is reported in job.start (overlap: true, overlap_pids) and on stderr. Refusing it
would turn one slow run into a missed run, and each opskit job is safe to overlap
(deploy holds the service lock, notify --flush claims rows, drift-scan only reads).

Clock changes: incidents and recoveries are matched by the run counter, never by
timestamps. When cron-check sees the clock went backwards (its own last run, or a job
start, lies in the future), it restarts every job's measurement from now instead of
comparing with the future: no false "missed" storm, and real misses after the jump are
still caught one period later.
"""

from opskit.jobs.cron_check import CheckReport, cron_check, cron_check_health, watched_jobs
from opskit.jobs.run_job import JobRun, run_job

__all__ = ["CheckReport", "JobRun", "cron_check", "cron_check_health", "run_job", "watched_jobs"]
