"""Push routing: every ref a push updated goes to a deploy, a feature-branch chain, or nowhere.

post-receive hands its stdin here (hookmain). A push to the service's `branch` deploys it
(when `direct_push` is on); a push of a `feature_branches` ref starts the chain (test →
review → merge → deploy); anything else is journaled and left alone. A post-receive hook
cannot undo a push: each ref is handled on its own, and one ref's failure is journaled and
announced without dropping the others. The work itself runs in a detached `opskit push-run`
(its own session: the pusher leaving cannot stop it); the hook streams its log to the pusher
while they listen, or with `background = true` tells them where the log is and returns.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from opskit.base import config, detach, proc, statefs
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import ExitCode, OpsError, UsageError, redact
from opskit.base.text import printable, short
from opskit.chain import feature
from opskit.deploy.pipeline import deploy
from opskit.deploy.run import Run, Write, announce_run, new_chain_id, was_notified
from opskit.git.repo import ZERO
from opskit.notify.announce import event_ref
from opskit.storage.journal import Journal

# Logs of earlier detached runs kept per service (each push writes one).
KEEP_LOGS = 200


def route(svc: ServiceSettings, ref: str, new: str) -> str:
    """What a ref update means for the service: deploy | chain | deleted | ignored (…)."""
    if new == ZERO:
        return "deleted"
    if ref == f"refs/heads/{svc.branch}":
        return "deploy" if svc.direct_push else "ignored (direct_push = false)"
    if svc.is_feature_branch(ref):
        return "chain"
    return "ignored"


def on_post_receive(config_path: Path, service: str, updates: list[tuple[str, str, str]],
                    write: Write) -> int:
    """post-receive entry: journal each ref, then hand the refs to work one detached worker does.

    The worker (`opskit push-run`) runs in its own session: the pusher's Ctrl-C, a closed
    terminal or SSH session, or a killed `git push` cannot stop a deploy half-way (a bad commit
    would stay live, unreverted, and nobody told). The hook follows the worker's log while the
    pusher listens (`background = false`) and returns its exit code; with `background = true`
    it returns at once. A post-receive hook cannot undo a push; its exit code is only shown.
    """
    settings = config.load(config_path)
    svc = settings.service(service)
    journal = Journal(settings.state_dir, fleet=settings.fleet)
    todo: list[str] = []
    for old, new, ref in updates:
        chain = new_chain_id("p")
        action = route(svc, ref, new)
        journal.append("push.received", service, {"ref": printable(ref), "old": old, "new": new, "action": action},
                       chain=chain, sha=None if new == ZERO else new)
        if action in ("deploy", "chain"):
            todo.append(f"{chain}:{new}:{ref}")
        elif action.startswith("ignored (direct_push"):
            write(f"{service}: push to {svc.branch} not deployed: direct_push is off for this service")
    if not todo:
        return int(ExitCode.OK)
    args = ["push-run", svc.name]
    for item in todo:
        args += ["--update", item]
    first, sha, ref = parse_update(todo[0])
    what = (f"handling {len(todo)} refs" if len(todo) > 1 else f"deploying {short(sha)}"
            if route(svc, ref, sha) == "deploy" else f"testing {printable(ref)} {short(sha)}")
    if svc.background:
        spawn_background(settings, svc, args, write, what, run_id=first)
        return int(ExitCode.OK)
    log, status = run_files(settings, svc, first)
    pid = detach.spawn_recorded(_opskit_argv(settings, args), log=log, status=status, cwd="/", env=proc.clean_env())
    seen = detach.follow(pid, log, status, write)
    if not seen.finished:
        return int(ExitCode.OK)  # they hung up; the worker goes on and journals its outcome
    rc = detach.exit_code(seen.returncode)
    if rc is None:
        write(f"{svc.name}: the pipeline (pid {pid}) ended without a status; see `opskit status` and {log}")
        return int(ExitCode.FAILED)
    return rc


def run_updates(settings: Settings, svc: ServiceSettings, updates: list[tuple[str, str, str]], write: Write) -> int:
    """The worker's half (`opskit push-run`): each (chain, new, ref) deployed or chained in turn.

    One ref's failure (the lock stayed busy, git failed) must not drop the other refs of the
    same push, and must not pass unnoticed: the push itself has landed."""
    journal = Journal(settings.state_dir, fleet=settings.fleet)
    code = int(ExitCode.OK)
    write = _unbreakable(write)
    for chain, new, ref in updates:
        action = route(svc, ref, new)
        try:
            if action == "deploy":
                result = deploy(settings, journal, svc.name, new, chain=chain, write=write)
                write(f"{svc.name}: {result.status}: {result.reason}")
                code = max(code, result.exit_code)
            elif action == "chain":
                code = max(code, _start_chain(settings, journal, svc, ref, new, chain, write))
        except OpsError as e:
            _ref_failed(settings, journal, svc, ref, new, action, chain, e, write)
            code = max(code, int(ExitCode.FAILED))
        except Exception as e:  # a bug or an unreadable journal: this ref is lost, the owner must know
            _ref_failed(settings, journal, svc, ref, new, action, chain, e, write)
            code = max(code, int(ExitCode.INTERNAL))
    return code


def _unbreakable(write: Write) -> Write:
    """The worker's output goes to a log in the state dir; a full disk there must not stop it."""
    def safe(line: str) -> None:
        try:
            write(line)
        except (OSError, ValueError):
            pass
    return safe


def parse_update(text: str) -> tuple[str, str, str]:
    """`CHAIN:SHA:REF` (a ref name cannot hold ':', git check-ref-format) → (chain, sha, ref)."""
    chain, sep, rest = text.partition(":")
    sha, sep2, ref = rest.partition(":")
    if not (sep and sep2 and chain and sha and ref):
        raise UsageError(f"--update {text!r}: expected CHAIN:SHA:REF")
    return chain, sha, ref


def run_files(settings: Settings, svc: ServiceSettings, run_id: str) -> tuple[Path, Path]:
    """Where a detached run of a push writes its log and exit status (older ones are pruned)."""
    logs = settings.state_dir / "logs"
    try:
        statefs.mkdir(logs, settings.state_dir)
        # Never through a planted link (statefs, tests/test_state_links.py); shared when created: operators
        # (group opskit) read it too, whatever the hook account's umask.
        statefs.append_bytes(logs / f"push-{svc.name}-{run_id}.log", settings.state_dir,
                             f"opskit: run {run_id} of {svc.name}\n".encode())  # fails now, not in the worker, when full
    except (OSError, statefs.Unsafe):
        # A full or read-only state dir must not keep the pipeline from starting: log elsewhere.
        logs = Path(tempfile.gettempdir()) / f"opskit-{os.getuid()}-logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        st = logs.lstat()
        if not logs.is_dir() or logs.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            # Its name is predictable: someone else's folder there would read (or forge) our log.
            logs = Path(tempfile.mkdtemp(prefix=f"opskit-{os.getuid()}-logs-"))
    for pattern in (f"push-{svc.name}-*.log", f"push-{svc.name}-*.status"):
        detach.prune(logs, pattern, KEEP_LOGS)
    return logs / f"push-{svc.name}-{run_id}.log", logs / f"push-{svc.name}-{run_id}.status"


def _start_chain(settings: Settings, journal: Journal, svc: ServiceSettings, ref: str, sha: str, chain: str,
                 write: Write) -> int:
    """A feature-branch push: supersede what it replaces, then run the chain (in the worker)."""
    for line in feature.supersede_parked(journal, svc.name, ref, sha, chain=chain):
        write(line)
    result = feature.run_now(settings, journal, svc.name, ref, sha, chain=chain, write=write)
    write(f"{svc.name}: {result.status}: {result.reason}")
    return result.exit_code


def _ref_failed(settings: Settings, journal: Journal, svc: ServiceSettings, ref: str, new: str, action: str,
                chain: str, e: Exception, write: Write) -> None:
    run = Run(settings=settings, journal=journal, svc=svc, chain=chain, write=write, sha=new)
    why = redact(str(e))[:500]
    what = "deploy" if action == "deploy" else "feature-branch chain"
    ev = run.emit("push.fail", {"ref": printable(ref), "new": new, "action": action, "reason": why,
                                "error": type(e).__name__})
    run.say(f"{svc.name}: {printable(ref)} {short(new)}: the {what} failed: {why} (event {ev.id})")
    if not was_notified(e):
        announce_run(run, f"{svc.name}: the push of {printable(ref)} ({short(new)}) landed, but its {what} failed: {why}\n"
                    f"Nothing else was done for this ref; see `opskit events --service {svc.name}`. Event: {event_ref(ev.id)}",
               title=f"{svc.name}: {what} of {printable(ref)} failed", level="error", event_id=ev.id)


def _opskit_argv(settings: Settings, args: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "opskit"]
    if settings.path is not None:
        argv += ["--config", str(Path(settings.path).resolve())]
    return [*argv, *args]


def spawn_background(settings: Settings, svc: ServiceSettings, args: list[str], write: Write, what: str,
                     run_id: str | None = None) -> int:
    """Run `opskit ARGS…` detached from the pusher, logging to the state dir; returns its pid."""
    log, status = run_files(settings, svc, run_id or new_chain_id("b"))
    pid = detach.spawn_recorded(_opskit_argv(settings, args), log=log, status=status, cwd="/", env=proc.clean_env())
    write(f"{svc.name}: {what} in the background (pid {pid}); log: {log}; "
          f"follow it with `opskit events --service {svc.name} --follow`")
    return pid
