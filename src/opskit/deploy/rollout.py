"""Put one commit live: move the worktree, run the deploy command, run the health gate.

The deploys row says where it is at every moment (worktree → deploy → health → a verdict),
so a crash leaves a record of where it stopped; recovery.py reads it on the next run.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from typing import Any

from opskit.base import accounts, bwrap, proc, statefs
from opskit.base.errors import OpsError, redact
from opskit.base.ignore import ignored
from opskit.base.text import printable, short
from opskit.deploy import health, service_logs
from opskit.deploy.run import Rollout, Run, announce_run, mark_notified
from opskit.git.repo import Git
from opskit.git.worktree import fetch_worktree, save_dirty
from opskit.notify.announce import event_ref
from opskit.storage.journal import Event

DIRTY_REF_PREFIX = "refs/opskit/dirty/"


def move_worktree(run: Run, sha: str) -> str | None:
    """Put the worktree ON `branch` at sha; dirty state is saved to a ref first (and checked
    byte for byte), never lost."""
    svc = run.svc
    wt = Git(svc.worktree)
    if wt.rev_parse(sha) is None:  # e.g. the revert just landed in the canonical repo
        wt = fetch_worktree(svc)
    # drift_ignore spares untracked files (logs, caches) only: `checkout --force` leaves those
    # alone, but it discards every change to a tracked file, so each one is saved first.
    dirty = [e for e in wt.status() if e.code != "??" or not ignored(e.path, svc.drift_ignore)]
    saved: str | None = None
    if dirty:
        stamp = run.clock.now().astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept = save_dirty(wt, DIRTY_REF_PREFIX, stamp,
                          f"opskit: dirty state of {svc.name} saved before deploying {short(sha)}")
        if kept is not None:
            saved = kept[0]
            names = ", ".join(printable(e.path) for e in dirty[:5]) + (" …" if len(dirty) > 5 else "")
            run.say(f"worktree had {len(dirty)} changed file(s) ({names}); saved to {saved}")
    wt.run("checkout", "--quiet", "--force", "-B", svc.branch, sha)
    return saved


def run_locked(run: Run, argv: Sequence[str], **kw: Any) -> proc.Result:
    """proc.run for a command run under the service lock: it holds the lock while it runs, so
    if we are killed (SIGKILL, OOM) the next deploy waits for it instead of running beside it.
    What it starts in the background does not inherit the lock (proc.holding)."""
    if run.lock_fd is None:
        return proc.run(argv, **kw)
    res = proc.run(proc.holding(run.lock_fd, argv), pass_fds=(run.lock_fd,), **kw)
    res.argv = list(argv)  # say what the user configured, not the keeper around it
    return res


DEPLOY_LOG_ROOM = 4 * 1024 * 1024  # bytes free the deploy log needs, or its output goes through a pipe


def deploy_log_path(run: Run) -> str:
    return os.path.join(run.settings.state_dir, "logs", f"deploy-{run.svc.name}.log")


def open_deploy_log(run: Run, *, empty: bool = True) -> int | None:
    """The deploy command's stdout and stderr: a file, not a pipe of ours, so a server it starts
    in the background (`python3 app.py 8000 &`) writes into the file after we are gone instead
    of getting EPIPE, and we never wait on a pipe it holds (tests/test_deploy_output.py).
    Truncated at each deploy, so it holds one deploy's output (plus what a backgrounded server
    writes until the next deploy); opened by statefs' rule, group-rw in a shared state dir so
    the service's account can write it. None (a pipe, as before) when it cannot be opened."""
    path = deploy_log_path(run)
    try:
        fd = statefs.open_file(path, run.settings.state_dir, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o660)
    except (OSError, OpsError) as e:
        run.say(f"warning: deploy log {path}: {e}; the deploy's output goes through a pipe")
        return None
    try:
        vfs = os.fstatvfs(fd)
        # what emptying the log frees counts too: a log a backgrounded server filled must not
        # keep the space that would let the next deploy empty it
        room = vfs.f_bavail * vfs.f_frsize + (os.fstat(fd).st_size if empty else 0)
    except OSError:
        room = DEPLOY_LOG_ROOM
    if room < DEPLOY_LOG_ROOM:
        # A deploy command whose output cannot be written fails (ENOSPC on its stdout): on a
        # full state dir the revert's redeploy must still run (tests/test_journal_faults.py).
        os.close(fd)
        run.say(f"warning: deploy log {path}: disk full ({room} bytes free, df -h {run.settings.state_dir}); "
                "the deploy's output goes through a pipe")
        return None
    if empty:
        try:
            os.ftruncate(fd, 0)  # one deploy's output; only once there is room (the check above)
        except OSError:
            pass
    return fd


def note_logs(run: Run, d: Rollout, since: float) -> dict[str, Any]:
    """Read the service's own log after a failure: kept on the rollout (and in run.notes by
    commit, for the revert's message), the last lines told to the pusher; returns the event
    data (`logs`, `logs_note`)."""
    cap = service_logs.capture(run.svc, since)
    d.logs, d.logs_note = cap.lines, cap.note
    run.notes.setdefault("logs", {})[d.sha] = cap
    if cap.lines:
        n = min(len(cap.lines), service_logs.PUSHER_LINES)
        run.say(f"service log, last {n} of {len(cap.lines)} line(s) (`opskit incident last --service "
                f"{run.svc.name}` has them all):")
        for ln in cap.lines[-n:]:
            run.say(f"  log| {ln}")
    if cap.note:
        run.say(cap.note)
    return cap.data()


def roll_out(run: Run, sha: str, *, kind: str = "deploy", previous: str | None = None) -> Rollout:
    """Move the worktree to sha, run `deploy`, run the health gate; the deploys row tells
    where it is at every moment so a crash leaves a record of where it stopped."""
    svc, journal = run.svc, run.journal
    deploy_id = journal.deploy_start(svc.name, sha, previous=previous, chain=run.chain, kind=kind)
    d = Rollout(ok=False, sha=sha, deploy_id=deploy_id, stage="worktree", reason="")
    try:
        journal.deploy_step(deploy_id, "worktree")
        d.saved_ref = move_worktree(run, sha)
        subject = printable(Git(svc.worktree).subject(sha))
        d.stage = "deploy"
        journal.deploy_step(deploy_id, "deploy")
        run.emit("deploy.start", {"sha": sha, "previous": previous, "step": "deploy", "kind": kind,
                                  "deploy_id": deploy_id, "subject": subject, "saved_ref": d.saved_ref,
                                  **run.notes.get("fleet_lock", {})},
                 sha=sha)
        run.say(f"{'reverting' if kind == 'revert' else 'deploying'} {svc.name} {short(sha)} {subject}")
        since = run.clock.now().timestamp()  # OPSKIT_SINCE of the service's log (service_logs.py)
        if svc.deploy:
            # A revert's redeploy keeps the bad deploy's output (the broken server's own last words,
            # when `logs` is unset) and appends after it.
            out = open_deploy_log(run, empty=kind != "revert")
            try:
                res = run_locked(run, proc.shell_argv(svc.deploy), cwd=svc.worktree, timeout=svc.deploy_timeout,
                                 stream=lambda ln: run.say(f"  | {ln}"),
                                 env=proc.clean_env({"OPSKIT_SERVICE": svc.name, "OPSKIT_SHA": sha,
                                                     "OPSKIT_PREVIOUS": previous or ""}),
                                 user=accounts.drop_for_service(svc), output=out)
            finally:
                if out is not None:
                    os.close(out)
            data = {"sha": sha, "previous": previous, "step": "deploy", "kind": kind, "deploy_id": deploy_id,
                    "exit": res.returncode, "timed_out": res.timed_out, "duration": round(res.duration, 2),
                    "tail": res.tail_text()}
            if not res.ok:
                d.reason = ("deploy command timed out after "
                            f"{svc.deploy_timeout:.0f}s" if res.timed_out else f"deploy command failed: {res.describe()}")
                data["reason"] = d.reason
                run.say(f"✘ {d.reason}")
                data.update(note_logs(run, d, since))
                d.fail_event_id = run.emit("deploy.fail", data, sha=sha).id
                journal.deploy_finish(deploy_id, "failed", d.reason)
                return d
            run.emit("deploy.complete", data, sha=sha)
            run.say(f"deploy command finished in {res.duration:.1f}s")
        else:
            run.emit("deploy.complete", {"sha": sha, "previous": previous, "step": "deploy", "kind": kind,
                                         "deploy_id": deploy_id, "note": "no deploy command configured"}, sha=sha)
        d.stage = "health"
        journal.deploy_step(deploy_id, "health")
        if not svc.health.configured:
            # No probe configured means no gate to fail: say so loudly rather than invent a pass.
            run.say(f"warning: {svc.name} has no [health] probe: the deploy is not gated")
            d.ok, d.stage, d.reason = True, "done", "deployed (no health gate configured)"
            journal.deploy_finish(deploy_id, "healthy", d.reason)
            return d
        h = svc.health
        run.say(health.start_line(h))
        # A `cmd` probe runs in the worktree it gates, as `health-gate SERVICE` runs it, and
        # (sandbox = "bwrap") in the sandbox: it is code from the pushed tree.
        verdict = health.gate(h, journal=journal, service=svc.name, chain=run.chain, sha=sha, clock=run.clock,
                              cwd=svc.worktree, wrap=bwrap.probe_wrapper(run.settings, svc),
                              sandbox=svc.sandbox if h.cmd else None,
                              on_fail=lambda: note_logs(run, d, since))
        d.health_event_id = verdict.event_id
        if verdict.healthy:
            d.ok, d.stage, d.reason = True, "done", verdict.reason or "healthy"
            journal.deploy_finish(deploy_id, "healthy", None)
        else:
            d.reason = verdict.reason or "health gate failed"
            d.fail_event_id = verdict.event_id
            journal.deploy_finish(deploy_id, "failed", d.reason)
        # Not a line a probe: the journal's health event keeps every probe (tests/test_quiet_push.py).
        for line in health.verdict_lines(verdict):
            run.say(line)
        return d
    except BaseException as e:
        # A crash or Ctrl-C inside a step: leave a record of where it stopped.
        # The row ends 'interrupted', never 'failed': the commit got no verdict, so the next run
        # (cron's `opskit deploy`) must deploy it again, not call it "already deployed".
        ctrl_c = isinstance(e, KeyboardInterrupt)
        why = "interrupted" if ctrl_c else redact(f"{type(e).__name__}: {e}")[:300]
        ev: Event | None = None
        try:
            ev = run.emit("deploy.fail", {"sha": sha, "previous": previous, "step": d.stage, "kind": kind,
                                          "deploy_id": deploy_id, "reason": why, "interrupted": ctrl_c,
                                          "crashed": not ctrl_c}, sha=sha)
            journal.deploy_finish(deploy_id, "interrupted", why)
        except Exception:
            pass
        # A git or OS failure mid-deploy (a leftover .git/index.lock, a full disk): someone must
        # know. The revert's own redeploy is announced by revert.py, which freezes the service.
        if isinstance(e, Exception) and not (kind == "revert" and isinstance(e, OpsError)):
            what = "revert" if kind == "revert" else "deploy"
            announce_run(run, f"{svc.name}: the {what} of {short(sha)} stopped at step '{d.stage}': {why}\n"
                        f"It did not reach a verdict; the next `opskit deploy {svc.name}` tries again once "
                        f"the cause is fixed. Event: {event_ref(ev.id if ev else None)}",
                   title=f"{svc.name}: {what} of {short(sha)} crashed", level="error",
                   event_id=ev.id if ev else None)
            mark_notified(e)
        raise
