"""One run of a deploy chain: what every step sees and shares, and how it ends.

A chain is a list of named steps over one `Run` (deploy/pipeline.py composes the deploy's,
chain/feature.py puts test, review and merge around them). A step ends the chain by raising
`StopChain` after `run.finish(...)`; the last verdict is the chain's result.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opskit.base.clock import SYSTEM, Clock
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import ExitCode, OpsError, redact
from opskit.base.text import printable
from opskit.notify.announce import announce
from opskit.notify.base import Action
from opskit.storage.journal import Event, Journal

if TYPE_CHECKING:
    from opskit.deploy.revert import RevertResult

Write = Callable[[str], None]


@dataclass
class DeployResult:
    service: str
    ok: bool
    status: str  # healthy | nothing | superseded | reverted | failed | frozen
    sha: str | None
    reason: str
    exit_code: int
    previous: str | None = None
    deploy_id: int | None = None
    chain: str | None = None
    saved_ref: str | None = None
    revert: RevertResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "service": self.service, "ok": self.ok, "status": self.status, "sha": self.sha,
            "previous": self.previous, "reason": self.reason, "exit_code": self.exit_code,
            "deploy_id": self.deploy_id, "chain": self.chain, "saved_ref": self.saved_ref,
        }
        if self.revert is not None:
            out["revert"] = self.revert.to_dict()
        return out


@dataclass
class Rollout:
    """One commit put live: worktree moved, deploy command run, gate run."""

    ok: bool
    sha: str
    deploy_id: int
    stage: str  # where it ended: deploy | health | done
    reason: str
    saved_ref: str | None = None
    health_event_id: int | None = None
    fail_event_id: int | None = None
    logs: list[str] = field(default_factory=list)  # the service's own log after a failure
    logs_note: str | None = None  # why there are none, or why they stopped short


@dataclass
class Run:
    """What every step of one chain sees and shares."""

    settings: Settings
    journal: Journal
    svc: ServiceSettings
    chain: str
    clock: Clock = SYSTEM
    write: Write = print
    sha: str | None = None  # the commit this chain puts live (a merge step may set it)
    previous: str | None = None  # what was live before
    rollout: Rollout | None = None
    result: DeployResult | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    lock_fd: int | None = None  # the service lock's descriptor, held by the commands run under it

    @property
    def service(self) -> str:
        return self.svc.name

    def emit(self, type: str, data: dict[str, Any], *, sha: str | None = None) -> Event:
        return self.journal.append(type, self.service, data, chain=self.chain, sha=sha or self.sha)

    def say(self, line: str) -> None:
        try:
            self.write(redact(printable(line)))
        except Exception:  # the pusher hung up: the pipeline goes on regardless
            pass

    def finish(self, status: str, reason: str, *, ok: bool | None = None,
               exit_code: int | None = None) -> DeployResult:
        ok = status in ("healthy", "nothing") if ok is None else ok
        self.result = DeployResult(
            service=self.service, ok=ok, status=status, sha=self.sha, reason=reason,
            exit_code=int(exit_code if exit_code is not None else (ExitCode.OK if ok else ExitCode.FAILED)),
            previous=self.previous, deploy_id=self.rollout.deploy_id if self.rollout else None,
            chain=self.chain, saved_ref=self.rollout.saved_ref if self.rollout else None,
        )
        return self.result


class StopChain(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A step decided the chain ends here; run.result holds the outcome."""


Step = Callable[[Run], None]


def run_steps(run: Run, steps: Sequence[tuple[str, Step]]) -> DeployResult:
    """Run named steps in order until one stops the chain; the last result wins."""
    for name, step in steps:
        run.notes["step"] = name
        try:
            step(run)
        except StopChain:
            break
    if run.result is None:  # a chain whose steps set no verdict did not deploy anything
        raise OpsError(f"{run.service}: pipeline ended without a verdict (last step {run.notes.get('step')})")
    return run.result


def new_chain_id(prefix: str = "d") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def announce_run(run: Run, message: str, *, title: str, level: str, event_id: int | None,
                 actions: Sequence[Action] = ()) -> None:
    """Tell the owner about this run; what could not be delivered is said to the pusher."""
    announce(run.settings, run.journal, message, title=title, level=level, service=run.service,
             event_id=event_id, clock=run.clock, warn=run.say, actions=actions)


def mark_notified(e: BaseException) -> None:
    """Note on the exception that it was announced already (on_post_receive must not repeat it)."""
    try:
        e._opskit_notified = True  # type: ignore[attr-defined]
    except Exception:
        pass


def was_notified(e: BaseException) -> bool:
    return bool(getattr(e, "_opskit_notified", False))
