"""verify-push: prove that a push landed on the remote.

The seed incident: an agent said "done", exited 0, and had pushed nothing. So the only
evidence we accept is the remote itself (`git ls-remote`, never a cached tracking ref),
read before and after the wrapped command. Exit 0 means the expected commit is the
remote branch tip and the tip moved; everything else is named and exits 1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opskit.base import proc
from opskit.base.clock import SYSTEM, Clock
from opskit.base.errors import GitError, OpsError, UsageError, redact
from opskit.base.text import short
from opskit.git import repo as gitrepo
from opskit.git.repo import Git
from opskit.notify.announce import announce

if TYPE_CHECKING:
    from opskit.base.config import Settings
    from opskit.storage.journal import Journal

LANDED = "landed"
UP_TO_DATE = "up-to-date"  # only with allow_noop: the expected commit was already there
UNCHANGED = "unchanged"
MISMATCH = "mismatch"
REJECTED = "rejected"
BRANCH_MISSING = "branch-missing"
UNREACHABLE = "unreachable"
OK_OUTCOMES = (LANDED, UP_TO_DATE)
POLL_PERIOD = 1.0
TAIL_KEEP = 10

_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")


def strip_credentials(text: str) -> str:
    """Drop user[:token]@ from every URL in text (errors.redact only masks user:pass@;
    `https://TOKEN@host/x` has no colon and would slip through)."""
    return redact(_USERINFO.sub(r"\1", text))


@dataclass
class VerifyResult:
    outcome: str
    remote: str  # display form: credentials stripped
    branch: str
    before: str | None
    after: str | None
    expected: str | None
    reason: str
    cmd: list[str] | None = None
    cmd_exit: int | None = None
    cmd_tail: list[str] = field(default_factory=list)
    # other remote branches that changed while CMD ran: name -> [before, after]
    moved: dict[str, list[str | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    event_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in OK_OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome, "ok": self.ok, "remote": self.remote, "branch": self.branch,
            "before": self.before, "after": self.after, "expected": self.expected,
            "reason": self.reason, "cmd_exit": self.cmd_exit, "cmd_tail": self.cmd_tail,
            "moved": self.moved, "notes": self.notes, "event_id": self.event_id,
        }


@dataclass(frozen=True)
class Target:
    repo: Git
    remote: str  # what git is given: a remote name, path or URL
    display: str  # what people see
    branch: str


# --- argument resolution (bad input is exit 2, before anything runs) ------------------------

def resolve_target(repo_dir: str | os.PathLike[str], remote: str | None, branch: str | None) -> Target:
    repo = Git(Path(repo_dir).expanduser().absolute())
    if not repo.is_repo():
        raise UsageError(f"{repo.path}: not a git repository; pass --repo DIR of a checkout")
    if branch is None:
        branch = repo.current_branch()
        if branch is None:
            raise UsageError(f"{repo.path}: HEAD is detached; pass --branch BRANCH")
    branch = branch.removeprefix("refs/heads/")
    if not branch or branch.startswith("-") or not repo.run(
            "check-ref-format", "--branch", branch, check=False).ok:
        raise UsageError(f"--branch {branch!r}: not a valid branch name; pass e.g. --branch master")
    if remote is None:
        remote = repo.config_get(f"branch.{branch}.remote") or "origin"
    if remote.startswith("-"):
        raise UsageError(f"--remote {remote!r}: not a remote; pass a remote name, path or URL")
    url = repo.config_get(f"remote.{remote}.url")
    if url is not None:
        display = f"{remote} ({strip_credentials(url)})"
    elif "://" in remote:
        if remote.startswith("file://") and not Path(remote[len("file://"):]).exists():
            raise UsageError(f"--remote {remote}: no such path; pass an existing repository")
        display = strip_credentials(remote)
    elif re.match(r"^[^/:]+:", remote) and not (repo.path / remote).exists():
        display = strip_credentials(remote)  # scp-like user@host:path
    else:
        path = Path(remote).expanduser()
        if not path.is_absolute():
            path = repo.path / path
        if not path.exists():
            names = repo.out("remote").split()
            known = ", ".join(names) or "none"
            raise UsageError(f"--remote {remote}: no such remote in {repo.path} (remotes: {known}); "
                             "pass a remote name, path or URL")
        display = remote
    return Target(repo=repo, remote=remote, display=display, branch=branch)


def resolve_sha(repo: Git, rev: str) -> str:
    sha = repo.rev_parse(rev) if not rev.startswith("-") else None
    if sha:
        return sha
    if _HEX40.match(rev):  # not here yet, but the remote may have it
        return rev.lower()
    raise UsageError(f"--expect {rev!r}: not a commit in {repo.path}; pass a full 40-hex sha or a ref")


# --- the checks -----------------------------------------------------------------------------

def _heads(t: Target, timeout: float) -> dict[str, str]:
    return gitrepo.ls_remote_heads(t.repo, t.remote, timeout=timeout)


def _contains(t: Target, tip: str, expected: str, timeout: float) -> bool:
    """Is expected an ancestor of the remote tip? Needs the tip's objects: use the local
    repo when it has them, else fetch the branch into a throwaway ref."""
    if tip == expected:
        return True
    if gitrepo.has_commit(t.repo, tip):
        return gitrepo.has_commit(t.repo, expected) and t.repo.is_ancestor(expected, tip)
    tmp = f"refs/opskit/verify/{os.getpid()}"
    try:
        t.repo.fetch(t.remote, f"+refs/heads/{t.branch}:{tmp}", timeout=timeout)
        fetched = t.repo.rev_parse(tmp)
        return bool(fetched and gitrepo.has_commit(t.repo, expected)
                    and t.repo.is_ancestor(expected, fetched))
    finally:
        t.repo.run("update-ref", "-d", tmp, check=False)


def _matches(t: Target, tip: str | None, expected: str, contains: bool, timeout: float) -> bool:
    if tip is None:
        return False
    return tip == expected or (contains and _contains(t, tip, expected, timeout))


def _rounds(clock: Clock, wait: float) -> Iterator[None]:
    """One round at once, then more every POLL_PERIOD until `wait` seconds have passed:
    the polling shared by the standalone check and the wrapper, for remotes that lag."""
    deadline = clock.monotonic() + wait
    while True:
        yield
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            return
        clock.sleep(min(POLL_PERIOD, remaining))


def check_remote(t: Target, expected: str, *, contains: bool = False, wait: float = 0.0,
                 timeout: float = 30.0, clock: Clock = SYSTEM) -> VerifyResult:
    """Standalone: is `expected` the remote tip (or, with contains, in its history)?
    Polls up to `wait` seconds for remotes that lag (mirrors, replicas)."""
    first: str | None = None
    tip: str | None = None
    seen = False
    error = ""
    for _ in _rounds(clock, wait):
        try:
            tip = _heads(t, timeout).get(t.branch)
            if not seen:
                first, seen = tip, True
            error = ""
            if _matches(t, tip, expected, contains, timeout):
                how = "has it in its history" if contains and tip != expected else "is at it"
                return VerifyResult(LANDED, t.display, t.branch, first, tip, expected,
                                    f"{t.display} {t.branch} {how}: {short(tip)}")
        except GitError as e:
            error = strip_credentials(e.message)
    waited = f" after waiting {wait:g}s" if wait > 0 else ""
    if error:
        return VerifyResult(UNREACHABLE, t.display, t.branch, first, None, expected,
                            f"cannot read {t.display}{waited}: {error}")
    if tip is None:
        return VerifyResult(BRANCH_MISSING, t.display, t.branch, first, None, expected,
                            f"{t.display} has no branch {t.branch}{waited}")
    want = f"{short(expected)} in its history" if contains else short(expected)
    return VerifyResult(MISMATCH, t.display, t.branch, first, tip, expected,
                        f"{t.display} {t.branch} is at {short(tip)}, expected {want}{waited}")


def wrap_push(t: Target, cmd: Sequence[str], *, expect: str | None = None, contains: bool = False,
              wait: float = 0.0, timeout: float = 30.0, allow_noop: bool = False,
              clock: Clock = SYSTEM, output: Callable[[str], None] | None = None) -> VerifyResult:
    """Read the remote, run cmd (output passed to `output` line by line), read it again."""
    cmd = list(cmd)
    try:
        before_heads = _heads(t, timeout)
    except GitError as e:
        # Without a "before" nothing can be proven afterwards; the push would fail the same way.
        return VerifyResult(UNREACHABLE, t.display, t.branch, None, None, expect,
                            f"cannot read {t.display} before running the command "
                            f"(not run): {strip_credentials(e.message)}", cmd=cmd)
    before = before_heads.get(t.branch)

    def emit(line: str) -> None:
        if output is not None:
            output(strip_credentials(line))

    try:
        run = proc.run(cmd, cwd=t.repo.path, timeout=None, stream=emit)
    except OpsError as e:  # not found / not executable: a failed push all the same, journaled
        run = proc.Result(argv=cmd, returncode=127, tail=[e.message])
    tail = [strip_credentials(ln) for ln in run.tail[-TAIL_KEEP:]]
    expected = expect or t.repo.branch_tip(t.branch) or t.repo.head()
    if expected is None:
        raise UsageError(f"{t.repo.path}: no commit to expect (empty branch); pass --expect SHA")

    after_heads: dict[str, str] = {}
    error = ""
    for _ in _rounds(clock, wait):
        try:
            after_heads = _heads(t, timeout)
            error = ""
            if (_matches(t, after_heads.get(t.branch), expected, contains, timeout)
                    and after_heads.get(t.branch) != before) or not run.ok:
                break
        except GitError as e:
            error = strip_credentials(e.message)

    after = after_heads.get(t.branch)
    moved = {name: [before_heads.get(name), after_heads.get(name)]
             for name in sorted(set(before_heads) | set(after_heads))
             if name != t.branch and before_heads.get(name) != after_heads.get(name)}
    res = VerifyResult("", t.display, t.branch, before, after, expected, "", cmd=cmd,
                       cmd_exit=run.returncode, cmd_tail=tail, moved={} if error else moved)
    _judge(res, t, run, contains=contains, timeout=timeout, error=error, allow_noop=allow_noop)
    if wait > 0 and not res.ok:
        res.reason += f" (waited {wait:g}s)"
    return res


def _judge(res: VerifyResult, t: Target, run: proc.Result, *, contains: bool, timeout: float, error: str,
           allow_noop: bool) -> None:
    """The outcome and its one-line reason, from the remote before and after and CMD's exit.
    "Landed" depends on the remote alone: a CMD that pushed and then failed still landed."""
    cmd, tail, moved = res.cmd or [], res.cmd_tail, res.moved
    before, after, expected = res.before, res.after, res.expected
    assert expected is not None
    cmd_said = f"`{_cmd_text(cmd)}` " + ("timed out" if run.timed_out else f"exited {run.returncode}")
    where = f"{t.display} {t.branch}"
    landed = _matches(t, after, expected, contains, timeout) if not error else False
    elsewhere = [n for n, (_, new) in moved.items() if new == expected]

    if error:
        res.outcome = UNREACHABLE
        res.reason = f"{cmd_said}, then {t.display} could not be read: {error}"
    elif landed and after != before:
        res.outcome = LANDED
        res.reason = f"{where} moved {short(before)} → {short(after)}"
        if not run.ok:
            res.notes.append(f"{cmd_said} although the push landed")
    elif not run.ok:
        res.outcome = REJECTED
        res.reason = f"{cmd_said}; {where} " + (
            "unchanged" if after == before else f"now at {short(after)}")
        last = next((ln for ln in reversed(tail) if ln.strip()), "")
        if last:
            res.reason += f": {last.strip()[:200]}"
    elif landed:
        # The commit was already the remote tip before CMD: nothing new was pushed. That is
        # what the seed incident looked like too, so it fails unless the operator says a
        # no-op is fine (--allow-noop), e.g. for an idempotent re-run.
        res.outcome = UP_TO_DATE if allow_noop else UNCHANGED
        res.reason = f"{where} was already at {short(after)} before the command; nothing new pushed"
        if not allow_noop:
            res.reason += " (pass --allow-noop to accept an up-to-date remote)"
    elif after is None:
        res.outcome = BRANCH_MISSING
        res.reason = (f"{cmd_said} but {t.display} has no branch {t.branch}"
                      + (f" (it was at {short(before)} before: deleted)" if before else ""))
        if elsewhere:
            res.reason += f"; {short(expected)} landed on {', '.join(elsewhere)}"
    elif after == before and not elsewhere:
        res.outcome = UNCHANGED
        res.reason = (f"{cmd_said} but {where} is still at {short(after)}; "
                      f"{short(expected)} was not pushed")
    else:
        res.outcome = MISMATCH
        if after == before:
            res.reason = (f"{short(expected)} landed on {', '.join(elsewhere)}, not {t.branch}; "
                          f"{where} is still at {short(after)}")
        else:
            res.reason = (f"{where} moved {short(before)} → {short(after)}, "
                          f"expected {short(expected)}")
            if elsewhere:
                res.reason += f"; {short(expected)} landed on {', '.join(elsewhere)}"


def _cmd_text(cmd: Sequence[str]) -> str:
    text = " ".join(cmd)
    return strip_credentials(text if len(text) <= 80 else text[:77] + "...")


# --- journal and notification --------------------------------------------------------------

def record(res: VerifyResult, settings: Settings, journal: Journal) -> VerifyResult:
    data: dict[str, Any] = {"outcome": res.outcome, "remote": res.remote, "branch": res.branch,
            "before": res.before, "after": res.after, "expected": res.expected,
            "cmd_exit": res.cmd_exit, "reason": res.reason}
    if res.moved:
        data["moved"] = res.moved
    if res.cmd_tail and not res.ok:
        data["cmd_tail"] = res.cmd_tail
    ev = journal.append("push.verified" if res.ok else "push.unverified", None, data,
                        sha=res.expected)
    res.event_id = ev.id
    if not res.ok:
        title = f"push not verified: {res.outcome} ({res.branch})"
        announce(settings, journal, f"{res.outcome}: {res.reason}", title=title, level="error", service=None,
                 event_id=ev.id, warn=lambda line: res.notes.append(strip_credentials(line)))
    return res


def verify_push(settings: Settings, journal: Journal, *, repo_dir: str | os.PathLike[str] = ".",
                remote: str | None = None, branch: str | None = None, expect: str | None = None,
                contains: bool = False, wait: float = 0.0, timeout: float = 30.0,
                cmd: Sequence[str] | None = None, allow_noop: bool = False, clock: Clock = SYSTEM,
                output: Callable[[str], None] | None = None) -> VerifyResult:
    """The command's one core call: resolve, check (wrapping cmd if given), journal, notify."""
    if wait < 0 or timeout <= 0:
        raise UsageError("--wait must be ≥ 0 and --timeout > 0 seconds")
    t = resolve_target(repo_dir, remote, branch)
    expected = resolve_sha(t.repo, expect) if expect else None
    if cmd:
        res = wrap_push(t, cmd, expect=expected, contains=contains, wait=wait, timeout=timeout,
                        allow_noop=allow_noop, clock=clock, output=output)
    else:
        if expected is None:
            expected = t.repo.branch_tip(t.branch) or t.repo.head()
            if expected is None:
                raise UsageError(f"{t.repo.path}: branch {t.branch} has no commit; pass --expect SHA")
        res = check_remote(t, expected, contains=contains, wait=wait, timeout=timeout, clock=clock)
    return record(res, settings, journal)
