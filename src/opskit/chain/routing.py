"""Push routing: every ref a push updated goes to a deploy, a feature-branch chain, or nowhere.

post-receive hands its stdin here (hookmain). A push to the service's `branch` deploys it
(when `direct_push` is on); a push of a `feature_branches` ref starts the chain (test →
review → merge → deploy); anything else is journaled and left alone. A post-receive hook
cannot undo a push: each ref is handled on its own, and one ref's failure is journaled and
announced without dropping the others. With `background = true` the work goes on in a
detached `opskit deploy` / `opskit chain-run` and the pusher is told where its log is.
"""

from __future__ import annotations

import sys
from pathlib import Path

from opskit.base import config, proc, statefs
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import ExitCode, OpsError, redact
from opskit.base.text import printable, short
from opskit.chain import feature
from opskit.deploy.pipeline import deploy
from opskit.deploy.run import Run, Write, announce_run, new_chain_id, was_notified
from opskit.git.repo import ZERO
from opskit.storage.journal import Journal


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
    """post-receive entry: deploy pushes to `branch` (direct_push), start chains for features.

    A post-receive hook cannot undo a push; its exit code is only shown to the pusher.
    """
    settings = config.load(config_path)
    svc = settings.service(service)
    journal = Journal(settings.state_dir)
    code = int(ExitCode.OK)
    for old, new, ref in updates:
        chain = new_chain_id("p")
        action = route(svc, ref, new)
        journal.append("push.received", service, {"ref": printable(ref), "old": old, "new": new, "action": action},
                       chain=chain, sha=None if new == ZERO else new)
        try:
            if action == "deploy":
                if svc.background:
                    spawn_background(settings, svc, ["deploy", svc.name, "--sha", new, "--chain", chain], write,
                                     f"deploying {short(new)}")
                else:
                    result = deploy(settings, journal, service, new, chain=chain, write=write)
                    write(f"{service}: {result.status}: {result.reason}")
                    code = max(code, result.exit_code)
            elif action == "chain":
                code = max(code, _start_chain(settings, journal, svc, ref, new, chain, write))
            elif action.startswith("ignored (direct_push"):
                write(f"{service}: push to {svc.branch} not deployed: direct_push is off for this service")
        except OpsError as e:
            # One ref's failure (the lock stayed busy, git failed) must not drop the other refs
            # of the same push, and must not pass unnoticed: the push itself has landed.
            _ref_failed(settings, journal, svc, ref, new, action, chain, e, write)
            code = max(code, int(ExitCode.FAILED))
    return code


def _start_chain(settings: Settings, journal: Journal, svc: ServiceSettings, ref: str, sha: str, chain: str,
                 write: Write) -> int:
    """A feature-branch push: supersede what it replaces, then run the chain here or detached."""
    for line in feature.supersede_parked(journal, svc.name, ref, sha, chain=chain):
        write(line)
    if svc.background:
        spawn_background(settings, svc, ["chain-run", svc.name, "--ref", ref, "--sha", sha, "--chain", chain],
                               write, f"testing {printable(ref)} {short(sha)}")
        return int(ExitCode.OK)
    result = feature.run_now(settings, journal, svc.name, ref, sha, chain=chain, write=write)
    write(f"{svc.name}: {result.status}: {result.reason}")
    return result.exit_code


def _ref_failed(settings: Settings, journal: Journal, svc: ServiceSettings, ref: str, new: str, action: str,
                chain: str, e: OpsError, write: Write) -> None:
    run = Run(settings=settings, journal=journal, svc=svc, chain=chain, write=write, sha=new)
    why = redact(str(e))[:500]
    what = "deploy" if action == "deploy" else "feature-branch chain"
    ev = run.emit("push.fail", {"ref": printable(ref), "new": new, "action": action, "reason": why,
                                "error": type(e).__name__})
    run.say(f"{svc.name}: {printable(ref)} {short(new)}: the {what} failed: {why} (event {ev.id})")
    if not was_notified(e):
        announce_run(run, f"{svc.name}: the push of {printable(ref)} ({short(new)}) landed, but its {what} failed: {why}\n"
                    f"Nothing else was done for this ref; see `opskit events --service {svc.name}`. Event: #{ev.id}",
               title=f"{svc.name}: {what} of {printable(ref)} failed", level="error", event_id=ev.id)


def spawn_background(settings: Settings, svc: ServiceSettings, args: list[str], write: Write, what: str) -> int:
    """Run `opskit ARGS…` detached from the pusher, logging to the state dir; returns its pid."""
    log = settings.state_dir / "logs" / f"{svc.name}.log"
    argv = [sys.executable, "-m", "opskit"]
    if settings.path is not None:
        argv += ["--config", str(Path(settings.path).resolve())]
    statefs.mkdir(log.parent, settings.state_dir)
    pid = proc.spawn_detached([*argv, *args], log=log, cwd="/", env=proc.clean_env())
    statefs.share(log, settings.state_dir)
    write(f"{svc.name}: {what} in the background (pid {pid}); log: {log}; "
          f"follow it with `opskit events --service {svc.name} --follow`")
    return pid
