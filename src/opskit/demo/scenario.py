"""`opskit demo`: the 03:57 incident, end to end, in a throw-away sandbox.

A newcomer's first command. Everything a user would set up is set up the way the README
says — an opskit.toml (with the webhook URL in a .env beside it), `opskit hooks install`,
`opskit deploy` — but inside a temp dir with its own state dir, so the user's journal,
crontab and git config are never touched. Then the seed incident is replayed through the
feature-branch chain (direct_push = false): the developer only pushes a feature branch
whose service will not start; post-receive runs its tests (which pass: they import the
service code without starting it, as on the night), the review, opskit's own merge into
master, the deploy; the gate sees `Connection refused`, exactly that merge is reverted,
redeployed and announced on a local stand-in for Discord, and re-pushing the reverted
tree is refused. The demo then CHECKS each fact the issue's "Done when" names and returns
them: a demo that only prints would hide a broken loop.

Real processes all the way: the opskit commands run as subprocesses of this interpreter
and the hooks are the installed ones, so the demo proves the product, not a mock of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from opskit.base import proc
from opskit.base.config import HealthSettings
from opskit.base.errors import ExitCode, OpsError, redact, register_secret
from opskit.demo import tap as demo_tap
from opskit.deploy import health
from opskit.git import repo as gitrepo
from opskit.git.repo import Git
from opskit.standins import free_port
from opskit.standins.receiver import Receiver
from opskit.standins.repos import Repos, build
from opskit.standins.service import deploy_command, kill_pid, stop
from opskit.storage.journal import Event, Journal
from opskit.views.events import summarize

SERVICE = "primerouter"
BRANCH = "master"
FEATURE = "feature/phase2-humanrail-channel"
# Where the developer re-lands the reverted work unchanged (a revert of the revert).
RELAND = f"{FEATURE}-reland"
# Tight gate settings so the whole loop takes seconds, not the seed's minutes.
HEALTH = {"window": 3, "period": 0.5, "timeout": 1, "failures": 2, "startup": 3}
CMD_TIMEOUT = 120.0
LOOP_BUDGET = 60.0  # the issue: "in under a minute"
_SERVICE_MARKER = "opskit.standins.service"


# --- results ----------------------------------------------------------------------------------

@dataclass
class Fact:
    name: str  # stable key for --json and tests
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Mark:
    at: float  # seconds since the feature branch was pushed
    what: str
    type: str | None = None  # the journal event type, when it came from one

    def to_dict(self) -> dict[str, Any]:
        return {"at": round(self.at, 2), "what": self.what, "type": self.type}


@dataclass
class DemoResult:
    sandbox: str
    kept: bool
    facts: list[Fact] = field(default_factory=list)
    timeline: list[Mark] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    commits: dict[str, str] = field(default_factory=dict)  # good, feature, merge, revert
    chain: str | None = None  # the feature push's chain id, shared by every step of the loop
    service_pids: list[int] = field(default_factory=list)
    port: int | None = None
    pushed_at: float | None = field(default=None, repr=False)  # monotonic time of the feature push

    @property
    def ok(self) -> bool:
        return bool(self.facts) and all(f.ok for f in self.facts)

    @property
    def failed(self) -> list[Fact]:
        return [f for f in self.facts if not f.ok]

    @property
    def exit_code(self) -> int:
        return int(ExitCode.OK if self.ok else ExitCode.FAILED)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "exit_code": self.exit_code, "sandbox": self.sandbox, "kept": self.kept,
                "service": SERVICE, "port": self.port, "service_pids": self.service_pids,
                "commits": self.commits, "chain": self.chain, "timings": {k: round(v, 2) for k, v in self.timings.items()},
                "facts": [f.to_dict() for f in self.facts], "timeline": [m.to_dict() for m in self.timeline]}


class Narrator(Protocol):
    """How the demo tells its story; the command renders it with rich, --json stays quiet."""

    def step(self, title: str) -> None: ...

    def info(self, text: str) -> None: ...

    def output(self, line: str) -> None: ...  # a line printed by a command the demo ran

    def fact(self, fact: Fact) -> None: ...

    def timeline(self, marks: Sequence[Mark]) -> None: ...

    def events(self, events: Sequence[Event]) -> None: ...

    def message(self, title: str, content: str) -> None: ...


class Quiet:
    def step(self, title: str) -> None: pass

    def info(self, text: str) -> None: pass

    def output(self, line: str) -> None: pass

    def fact(self, fact: Fact) -> None: pass

    def timeline(self, marks: Sequence[Mark]) -> None: pass

    def events(self, events: Sequence[Event]) -> None: pass

    def message(self, title: str, content: str) -> None: pass


class _Redacted:
    """Every word the demo shows passes redact(): the webhook URL is a registered secret."""

    def __init__(self, inner: Narrator) -> None:
        self.inner = inner

    def step(self, title: str) -> None:
        self.inner.step(redact(title))

    def info(self, text: str) -> None:
        self.inner.info(redact(text))

    def output(self, line: str) -> None:
        self.inner.output(redact(line))

    def fact(self, fact: Fact) -> None:
        self.inner.fact(Fact(fact.name, fact.ok, redact(fact.detail)))

    def timeline(self, marks: Sequence[Mark]) -> None:
        self.inner.timeline([Mark(m.at, redact(m.what), m.type) for m in marks])

    def events(self, events: Sequence[Event]) -> None:
        self.inner.events(events)  # they come from the journal, which redacts on append

    def message(self, title: str, content: str) -> None:
        self.inner.message(redact(title), redact(content))


# --- the sandbox ------------------------------------------------------------------------------

@dataclass
class Sandbox:
    root: Path
    config: Path
    state_dir: Path
    run_dir: Path
    port: int
    webhook_url: str
    env: dict[str, str]
    receiver: Receiver | None = None
    repos: Repos | None = None
    bot: Receiver | None = None  # the Telegram Bot API stand-in (its own, so Discord's count stays exact)
    bot_token: str = ""

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{SERVICE}.pid"

    @property
    def service_log(self) -> Path:
        return self.run_dir / f"{SERVICE}.log"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def opskit(self, *args: str, stream: Callable[[str], None] | None = None,
               capture: bool = False) -> proc.Result:
        """The real `opskit` command, as a user types it, with the sandbox's config."""
        argv = [sys.executable, "-m", "opskit", "--config", str(self.config), *args]
        return proc.run(argv, cwd=self.root, env=self.env, timeout=CMD_TIMEOUT, stream=stream, capture=capture)

    def push(self, ref: str, stream: Callable[[str], None] | None = None) -> proc.Result:
        """`git push origin REF` from the developer's clone, through the installed hooks."""
        assert self.repos is not None
        return gitrepo.push_as_developer(self.repos.dev, "origin", ref, env=self.env, timeout=CMD_TIMEOUT,
                                         stream=stream)

    def service_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None


def _environment(root: Path, state_dir: Path, webhook_url: str) -> dict[str, str]:
    """What every process of the demo runs with: git and opskit pointed into the sandbox only."""
    gitconfig = root / "gitconfig"
    # The user's ~/.gitconfig may sign commits, set hooksPath or a template dir: none of it
    # belongs in a sandbox that must behave the same on every machine.
    gitconfig.write_text("[init]\n\tdefaultBranch = master\n[advice]\n\tdetachedHead = false\n"
                         "[commit]\n\tgpgsign = false\n[user]\n\tname = Dana Developer\n"
                         "\temail = dana@primerouter.invalid\n")
    env = proc.clean_env()
    for k in ("OPSKIT_CONFIG", "OPSKIT_BREAK_GLASS"):
        env.pop(k, None)
    env.update({
        "GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Dana Developer", "GIT_AUTHOR_EMAIL": "dana@primerouter.invalid",
        "GIT_COMMITTER_NAME": "Dana Developer", "GIT_COMMITTER_EMAIL": "dana@primerouter.invalid",
        "OPSKIT_STATE_DIR": str(state_dir),
        # A variable only the demo uses, set here as well as in the .env: with a shared name
        # (DISCORD_WEBHOOK_URL) the user's real webhook would win over the .env (python-dotenv
        # never overrides) and page their real channel, even from a --keep'd sandbox later.
        "OPSKIT_DEMO_WEBHOOK_URL": webhook_url,
    })
    return env


def config_text(sb: Sandbox, repos: Repos) -> str:
    """opskit.toml as a user writes it from the README (only the paths and gate differ)."""

    def q(value: object) -> str:
        return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string

    deploy = deploy_command(sb.port, sb.pidfile, sb.service_log)
    test = f"{shlex.quote(sys.executable)} ci/test.py"  # the interpreter opskit runs on
    h = HEALTH
    return f"""\
# opskit.toml for the demo sandbox: the keys the README documents.
[opskit]
state_dir = {q(sb.state_dir)}   # the demo's own journal, not yours
notify = ["ops", "phone"]

[notify.ops]
type = "discord"
url = "${{OPSKIT_DEMO_WEBHOOK_URL}}"  # from .env beside this file; never printed
retry_for = 5
timeout = 2

[service.{SERVICE}]
repo = {q(repos.bare)}
worktree = {q(repos.worktree)}
branch = "{BRANCH}"
deploy = {q(deploy)}   # restart the service, like systemctl restart
deploy_timeout = 30
direct_push = false                  # push a feature branch; opskit merges it
feature_branches = ["feature/*"]     # post-receive: test → review → merge → deploy → gate
test = {q(test)}   # in a throw-away checkout
test_timeout = 30
review = "sh ci/review.sh"           # exit 0 approves
review_timeout = 30
merge = "merge"                      # a merge commit, revertable with -m 1
drift_ignore = ["*.pid", "logs/"]

[service.{SERVICE}.health]
url = {q(sb.health_url)}
window = {h['window']}                           # the seed waited 60 s; the demo 3 s
period = {h['period']}
timeout = {h['timeout']}
failures = {h['failures']}
startup = {h['startup']}
expect_status = [200]
expect_body = "ok"
""" + (demo_tap.telegram_toml(sb.bot.url("telegram")) if sb.bot is not None else "")


TEST_PY = '''\
"""primerouter's tests: the service code imports and its settings parse.

Nothing is started, so a change that only breaks start-up passes them, as phase 2 did.
"""
from pathlib import Path

from opskit.standins import service  # the code `deploy` restarts; importing it starts nothing

mode = service.parse_mode(Path("service.mode").read_text())
channels = Path("channels.txt").read_text().split()
assert channels and len(set(channels)) == len(channels), f"bad channels.txt: {channels}"
print(f"test_import: {service.__name__} imports")
print(f"test_settings: mode {mode!s}, channels {', '.join(channels)}")
print("2 passed")
'''
REVIEW_SH = """\
#!/bin/sh
# primerouter's review gate, run by opskit on the pushed range: 0 approves, 1 rejects, 3 asks a human.
echo "reviewing $OPSKIT_BRANCH ($OPSKIT_RANGE)"
git diff --stat "$OPSKIT_RANGE" --
case "$OPSKIT_BRANCH" in *-ask-human) echo "this one needs a human"; exit 3;; esac
exit 0
"""
FIRST_FILES = {
    "README.md": "primerouter: routes prime traffic to its channels\n",
    "channels.txt": "telegram\nemail\n",
    # The sandbox service reads its behaviour from this file in the deployed worktree.
    "service.mode": "healthy\n",
    "ci/test.py": TEST_PY,
    "ci/review.sh": REVIEW_SH,
}
FEATURE_FILES = {
    "channels.txt": "telegram\nemail\nhumanrail\n",
    # Stands in for phase 2's bug: with the humanrail channel the service exits at start-up.
    "service.mode": "crash\n",
}


def _setup(sb: Sandbox, out: _Redacted, result: DemoResult) -> None:
    assert sb.receiver is not None
    out.step("1. A sandbox set up the way the README says")
    out.info(f"sandbox:          {sb.root}")
    out.info(f"Discord stand-in: 127.0.0.1:{sb.receiver.port} (webhook URL in .env, kept secret)")
    repos = build(sb.root, SERVICE, FIRST_FILES, BRANCH, env=sb.env)
    sb.repos = repos
    out.info(f"canonical repo:   {repos.bare}")
    out.info(f"deployed at:      {repos.worktree}")
    out.info(f"service:          {sb.health_url} (started by the deploy command)")
    sb.config.parent.mkdir(parents=True, exist_ok=True)
    sb.config.write_text(config_text(sb, repos))
    (sb.config.parent / ".env").write_text(f"OPSKIT_DEMO_WEBHOOK_URL={sb.webhook_url}\n"
                                           f"{demo_tap.BOT_TOKEN_ENV}={sb.bot_token}\n")
    out.info(f"config:           {sb.config} (+ .env)")

    out.info(f"$ opskit hooks install {SERVICE}")
    r = sb.opskit("hooks", "install", SERVICE, "--json", capture=True)
    installed = False
    try:
        installed = r.ok and bool(json.loads(r.stdout).get("all_installed"))
    except ValueError:
        pass
    _fact(out, result, "hooks_installed", installed,
          "pre-receive and post-receive in the bare repo, pre-commit in the worktree" if installed
          else f"`opskit hooks install` failed: {r.describe()} {r.stderr.strip()[-300:]}")
    if not installed:
        raise _Stop

    out.step("2. The first deploy: a good commit goes live through the gate")
    out.info(f"$ opskit deploy {SERVICE}")
    r = sb.opskit("deploy", SERVICE, stream=out.output)
    good = repos.git(repos.worktree).head() or ""
    result.commits["good"] = good
    j = Journal(sb.state_dir)
    passed = [e for e in j.query(service=SERVICE, type_prefix="health.pass") if e.sha == good]
    j.close()
    pid = sb.service_pid()
    if pid:
        result.service_pids.append(pid)
    _fact(out, result, "first_deploy_healthy", r.ok and bool(passed),
          f"{good[:10]} deployed and healthy (pid {pid})" if r.ok and passed
          else f"`opskit deploy` did not end healthy: {r.describe()}")
    if not result.facts[-1].ok:
        raise _Stop


class _Stop(Exception):  # noqa: N818 - control flow: a step failed, its fact says why
    pass


def _fact(out: _Redacted, result: DemoResult, name: str, ok: bool, detail: str) -> Fact:
    f = Fact(name, ok, redact(detail))
    result.facts.append(f)
    out.fact(f)
    return f


class _Watcher(threading.Thread):
    """Notes when each journal event appears: event timestamps have whole seconds only,
    and the timeline should show where the seconds went."""

    def __init__(self, state_dir: Path, t0: float, after_id: int) -> None:
        super().__init__(daemon=True, name="demo-journal-watcher")
        self.state_dir = state_dir
        self.t0 = t0
        self.after_id = after_id
        self.seen: list[tuple[float, Event]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        j = Journal(self.state_dir)
        try:
            while True:
                stopping = self._stop_event.is_set()
                for ev in j.query(after_id=self.after_id):
                    self.after_id = ev.id
                    self.seen.append((time.monotonic() - self.t0, ev))
                if stopping:
                    return
                self._stop_event.wait(0.05)
        finally:
            j.close()

    def finish(self) -> list[tuple[float, Event]]:
        self._stop_event.set()
        self.join(5)
        return self.seen


def _tail_line(tail: object) -> str:
    lines = [ln.strip() for ln in str(tail or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _sandbox_words(mode: object) -> str:
    if mode == "bwrap":
        return "in the bwrap sandbox (no .env, journal, production worktree or network in sight)"
    return f"sandbox: {mode or 'not recorded'}"


def _describe_event(ev: Event) -> str:
    d = ev.data
    sha = str(ev.sha or "")[:10]
    if ev.type == "push.received":
        action = str(d.get("action", ""))
        what = {"chain": "post-receive starts the chain", "deploy": "post-receive runs the pipeline"}.get(
            action, f"action: {action}")
        return f"push.received: {d.get('ref', '')} → {str(d.get('new', ''))[:10]}; {what}"
    if ev.type == "test.pass":
        return (f"test.pass: the repo's tests passed in a throw-away checkout of {sha}, "
                f"{_sandbox_words(d.get('sandbox'))} ({_tail_line(d.get('tail'))}, {d.get('duration', '?')}s)")
    if ev.type == "review.pass":
        return (f"review.pass: {d.get('command', '')} approved "
                f"{str(d.get('base') or '')[:10]}..{str(d.get('head') or '')[:10]}")
    if ev.type == "merge.complete":
        return (f"merge.complete: opskit merged {d.get('branch', '')} into {d.get('into', '')} "
                f"→ {str(d.get('merge') or '')[:10]}")
    if ev.type == "deploy.start":
        what = "redeploy of the revert" if d.get("kind") == "revert" else "deploy"
        return f"deploy.start: {what} {sha}: {d.get('subject', '')}"
    if ev.type == "deploy.complete":
        return f"deploy.complete: deploy command exited 0 in {d.get('duration', '?')}s"
    if ev.type in ("health.fail", "health.pass"):
        return f"{ev.type}: {d.get('target', '')} → {d.get('reason', '')}"
    if ev.type == "rollback.start":
        return f"rollback.start: revert {str(d.get('bad', ''))[:10]} ({d.get('strategy', '')})"
    if ev.type == "rollback.complete":
        return f"rollback.complete: {str(d.get('revert', ''))[:10]} live, human involvement zero"
    if ev.type == "notify.sent":
        kind = {"telegram": "Telegram", "ntfy": "ntfy", "slack": "Slack", "webhook": "webhook"}.get(
            str(d.get("kind", "")), "Discord")
        return f"notify.sent: {kind} message delivered (channel {d.get('channel', '?')})"
    if ev.type == "lockdown.blocked":
        return f"lockdown.blocked: re-push refused ({d.get('rule', '')})"
    return f"{ev.type}: {summarize(d, 70)}"


def _incident(sb: Sandbox, out: _Redacted, result: DemoResult) -> tuple[str, list[str], proc.Result]:
    """The developer pushes the bad feature branch, nothing else; the push returns after the
    chain's verdict (post-receive runs it in the foreground)."""
    repos = sb.repos
    assert repos is not None
    dev = repos.git(repos.dev)
    out.step(f"3. 03:53 — {FEATURE} is pushed; opskit tests, reviews and merges it into {BRANCH}")
    dev.run("checkout", "-q", "-b", FEATURE)
    head = repos.commit(FEATURE_FILES, "phase 2: humanrail channel")
    result.commits["feature"] = head
    mode = FEATURE_FILES.get("service.mode", "").strip()
    out.info(f"$ git commit -am 'phase 2: humanrail channel'   → {head[:10]} (service.mode: {mode})")
    j = Journal(sb.state_dir)
    last = j.last()
    j.close()
    out.info(f"$ git push origin {FEATURE}   (direct_push = false: {BRANCH} is opskit's to merge into)")
    watcher = _Watcher(sb.state_dir, time.monotonic(), last.id if last else 0)
    lines: list[str] = []

    def show(line: str) -> None:
        line = line.rstrip()  # git pads each remote: line with blanks to clear the terminal line
        lines.append(line)
        out.output(line)

    result.pushed_at = watcher.t0
    result.timeline.append(Mark(0.0, f"git push origin {FEATURE} ({head[:10]})"))
    watcher.start()
    try:
        push = sb.push(FEATURE, stream=show)
    finally:
        seen = watcher.finish()
    result.timeline.extend(Mark(at, _describe_event(ev), ev.type) for at, ev in seen)
    done = next((at for at, ev in seen if ev.type == "rollback.complete"), None)
    result.timings["push"] = push.duration
    if done is not None:
        result.timings["push_to_rollback_complete"] = done
    pid = sb.service_pid()
    if pid and pid not in result.service_pids:
        result.service_pids.append(pid)
    return head, lines, push


def _order(types: Sequence[str], *wanted: str) -> bool:
    """wanted appear in types in that order (other events may sit between)."""
    it = iter(types)
    return all(any(t == w for t in it) for w in wanted)


# The chain of one push, in order; every one of these events carries the push's chain id.
CHAIN = ("push.received", "test.pass", "review.pass", "merge.complete", "deploy.complete", "health.fail",
         "rollback.start", "health.pass", "rollback.complete")
# What the pusher must have seen in the remote: lines.
PUSH_OUTPUT = ("test passed", "review approved", f"merged {FEATURE} into {BRANCH}", "health gate failed",
               "Connection refused", "rolled back")


def _check(sb: Sandbox, out: _Redacted, result: DemoResult, head: str, lines: list[str],
           push: proc.Result) -> None:
    repos = sb.repos
    assert repos is not None and sb.receiver is not None
    bare = repos.git(repos.bare)
    out.step("4. What happened — checked, not assumed")
    text = "\n".join(lines)
    remote = [ln for ln in lines if ln.startswith("remote:")]
    missing = [w for w in PUSH_OUTPUT if w not in text]
    _fact(out, result, "push_showed_loop", push.ok and bool(remote) and not missing,
          f"the pusher saw {len(remote)} remote: lines: test, review, opskit's merge, deploy, gate failing, "
          "revert, redeploy, gate passing"
          if push.ok and remote and not missing else
          f"push {push.describe()}; missing from its output: {', '.join(missing) or 'remote: lines'}")

    j = Journal(sb.state_dir)
    try:
        pushed = next((e for e in j.query(service=SERVICE, type_prefix="push.received")
                       if e.data.get("ref") == f"refs/heads/{FEATURE}" and e.sha == head), None)
        chain = result.chain = pushed.chain if pushed else None
        mine = j.query(service=SERVICE, chain=chain) if chain else []
        first: dict[str, Event] = {}
        for e in mine:
            first.setdefault(e.type, e)

        tested, reviewed = first.get("test.pass"), first.get("review.pass")
        ok = tested is not None and reviewed is not None and tested.sha == head and reviewed.sha == head
        # the pushed code ran sandboxed: the demo shows what the README promises, not a bypass
        ok = ok and tested is not None and tested.data.get("sandbox") == "bwrap"
        stop = next((e for e in mine if e.type in ("test.fail", "test.skipped", "review.fail", "review.skipped",
                                                   "review.needs-human")), None)
        _fact(out, result, "tested_and_reviewed", ok,
              f"ci/test.py passed on {head[:10]} {_sandbox_words(tested.data.get('sandbox'))} "
              f"(\"{_tail_line(tested.data.get('tail'))}\": it imports the "
              f"service, never starts it, so the bad change passes, as in the seed); ci/review.sh approved"
              if ok and tested is not None else
              (f"no push.received for {FEATURE} {head[:10]}" if chain is None else
               f"chain {chain}: no sandboxed test.pass and review.pass for {head[:10]}"
               + (f" ({stop.type}: {stop.data.get('reason', '')})" if stop else "")))

        mc = first.get("merge.complete")
        merge = str(mc.data.get("merge") or "") if mc else ""
        good = result.commits.get("good", "")
        merged = bool(merge) and bare.parents(merge) == [good, head]
        by = bare.out("log", "-1", "--format=%cn", merge) if merged else ""
        merged = merged and by == "opskit" and f"Opskit-Chain: {chain}" in bare.message(merge)
        if merge:
            result.commits["merge"] = merge
        failed_merge = first.get("merge.fail")
        _fact(out, result, "merged_by_opskit", merged,
              f"{merge[:10]} \"{_clip(bare.subject(merge), 56)}\" committed by opskit: first parent {good[:10]} "
              f"({BRANCH}), second {head[:10]} ({FEATURE}), trailer Opskit-Chain: {chain}" if merged else
              (f"{merge[:10]} is not opskit's merge of {good[:10]} and {head[:10]} (committer {by or '?'})"
               if merge else "no merge commit: " + (str(failed_merge.data.get("reason", "")) if failed_merge
                                                     else f"no merge.complete in chain {chain}")))

        fail = next((e for e in mine if e.type == "health.fail" and e.sha == merge), None) if merge else None
        reason = str(fail.data.get("reason", "")) if fail else ""
        _fact(out, result, "gate_failed_refused", fail is not None and "refused" in reason.lower(),
              f"health.fail #{fail.id}: {reason}" if fail else
              f"no health.fail for {merge[:10] if merge else 'a merge'}")

        tip = bare.branch_tip(BRANCH) or ""
        result.commits["revert"] = tip
        is_revert = False
        if merge:
            first_parent = bare.parents(merge)[0]
            is_revert = (tip != merge and bare.parents(tip) == [merge] and bare.is_ancestor(merge, tip)
                         and bare.tree(tip) == bare.tree(first_parent)
                         and bare.message(tip).startswith(f"Auto-revert: {SERVICE}:"))
        _fact(out, result, "tip_is_revert", is_revert,
              f"{BRANCH} is at {tip[:10]} \"{_clip(bare.subject(tip), 48)}\": tree == {merge[:10]}^1, "
              f"{merge[:10]} still an ancestor (history not rewritten)" if is_revert else
              f"{BRANCH} is at {tip[:10]}, not an auto-revert of "
              + (merge[:10] if merge else "a merge (nothing was merged)"))

        wt = repos.git(repos.worktree)
        wt_head, branch = wt.head(), wt.current_branch()
        _fact(out, result, "worktree_at_revert", wt_head == tip and branch == BRANCH,
              f"{repos.worktree} runs {str(wt_head)[:10]} on {branch}")

        probe = health.probe_once(HealthSettings(url=sb.health_url, timeout=2.0, expect_status=(200,),
                                                 expect_body="ok"))
        _fact(out, result, "service_healthy", probe.ok, f"GET {sb.health_url} → {probe.detail}")

        # The hook sends before the push returns; only a slow delivery needs the wait.
        got = sb.receiver.wait_for(1, timeout=5.0 if is_revert else 0.5)
        content = str(got[0].body.get("content", "")) if got and isinstance(got[0].body, dict) else ""
        unnamed = [w for w in (SERVICE, "refused") if w not in content.lower()]
        _fact(out, result, "notified", len(got) == 1 and not unnamed,
              "one Discord message naming the service and the reason" if len(got) == 1 and not unnamed else
              f"{len(got)} message(s) arrived" + (f", without {' or '.join(map(repr, unnamed))} in it"
                                                  if got and unnamed else ""))
        if got:
            embeds = got[0].body.get("embeds") if isinstance(got[0].body, dict) else None
            title = str(embeds[0].get("title", "")) if isinstance(embeds, list) and embeds else "Discord"
            out.message(title, content)

        r = sb.opskit("events", "--service", SERVICE, "--json", capture=True)
        events = [_event(json.loads(ln)) for ln in r.stdout.splitlines() if ln.strip()]
        # Everything from the push to the end of its rollback is one chain (notifications carry none).
        end = next((e.id for e in events if e.type == "rollback.complete" and pushed and e.id > pushed.id), None)
        loop = [e for e in events if pushed and pushed.id <= e.id <= (end or e.id)
                and not e.type.startswith("notify.")]
        strays = [f"{e.type} #{e.id} ({e.chain or 'no chain'})" for e in loop if e.chain != chain]
        absent = [t for t in CHAIN if t not in {e.type for e in loop}]
        _fact(out, result, "one_chain", r.ok and bool(loop) and not strays and not absent,
              f"chain {chain}: all {len(loop)} events from push.received to rollback.complete carry it"
              if r.ok and loop and not strays and not absent else
              f"chain {chain}: " + "; ".join(filter(None, [
                  f"missing {', '.join(absent)}" if absent else "",
                  f"other chains: {', '.join(strays[:4])}" if strays else "",
                  "" if r.ok else f"`opskit events` {r.describe()}"])))

        types = [e.type for e in events if chain is not None and e.chain == chain]
        in_order = _order(types, *CHAIN)
        _fact(out, result, "events_in_order", r.ok and in_order,
              "`opskit events --json`: " + " → ".join(CHAIN)
              if r.ok and in_order else f"chain {chain}: {' → '.join(types) or 'no events'}"
              + ("" if r.ok else f"; `opskit events` {r.describe()}"))
        out.step(f"5. opskit events --service {SERVICE}")
        out.events(events)

        if is_revert:
            _quarantine(sb, out, result, bare, tip, merge, j)
        else:
            _fact(out, result, "repush_quarantined", False,
                  f"nothing was reverted, so the tree of {merge[:10] if merge else head[:10]} is not quarantined")

        secret_seen = [where for where, blob in (
            ("push output", text), ("events", r.stdout),
            ("journal", json.dumps([e.to_dict() for e in j.query()])),
        ) if sb.webhook_url in blob or sb.webhook_url.rsplit("/", 1)[-1] in blob]
        _fact(out, result, "secret_kept", not secret_seen,
              "the webhook URL appears in no output and no event" if not secret_seen
              else f"the webhook URL leaked into: {', '.join(secret_seen)}")
    finally:
        j.close()
    took = result.timings.get("push_to_rollback_complete")
    _fact(out, result, "under_a_minute", took is not None and took < LOOP_BUDGET,
          f"push → rollback.complete in {took:.1f}s" if took is not None else "no rollback.complete")


def _quarantine(sb: Sandbox, out: _Redacted, result: DemoResult, bare: Git, tip: str, merge: str,
                j: Journal) -> None:
    """Someone re-lands the reverted work unchanged (a revert of the revert, on a new feature
    branch, since direct pushes to master are off): pre-receive refuses it by its tree."""
    repos = sb.repos
    assert repos is not None
    out.step("6. The reverted tree pushed again")
    dev = repos.git(repos.dev)
    dev.run("fetch", "-q", "origin")
    dev.run("checkout", "-q", "-B", RELAND, f"origin/{BRANCH}")
    dev.run("revert", "--no-edit", tip)
    again = dev.out("rev-parse", "HEAD")
    same_tree = dev.tree(again) == bare.tree(merge)
    out.info(f"$ git checkout -b {RELAND} origin/{BRANCH} && git revert --no-edit {tip[:10]}")
    out.info(f"  → {again[:10]}, whose tree is {merge[:10]}'s" if same_tree else
             f"  → {again[:10]}, whose tree is NOT {merge[:10]}'s")
    out.info(f"$ git push origin {RELAND}")
    before = j.last()
    r = sb.push(RELAND, stream=lambda line: out.output(line.rstrip()))
    after = j.query(service=SERVICE, after_id=before.id if before else None)
    blocked = [e for e in after if e.type == "lockdown.blocked" and e.data.get("rule") == "quarantine"
               and e.data.get("ref") == f"refs/heads/{RELAND}" and e.data.get("hook") == "pre-receive"]
    started = [e for e in after if e.type == "push.received"]
    created, after_tip = bare.branch_tip(RELAND), bare.branch_tip(BRANCH)
    ok = same_tree and not r.ok and bool(blocked) and not started and created is None and after_tip == tip
    if blocked and result.pushed_at is not None:
        result.timeline.append(Mark(time.monotonic() - result.pushed_at,
                                    f"lockdown.blocked: push of the reverted tree to {RELAND} refused "
                                    f"(quarantine), event #{blocked[0].id}", "lockdown.blocked"))
    _fact(out, result, "repush_quarantined", ok,
          f"pre-receive refused {again[:10]} on {RELAND} (the tree of {merge[:10]}, quarantined): "
          f"lockdown.blocked #{blocked[0].id}; no branch created, no chain started" if ok else
          f"re-push {r.describe()}; {RELAND} {'created' if created else 'not created'}, {BRANCH} at "
          f"{str(after_tip)[:10]}; quarantine refusals: {len(blocked)}; chains started: {len(started)}")
    # Put the dev clone back where the canonical repo is, as the developer would.
    dev.run("checkout", "-q", "-B", BRANCH, f"origin/{BRANCH}")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _event(d: dict[str, Any]) -> Event:
    return Event(id=int(d["id"]), ts=str(d["ts"]), type=str(d["type"]), service=d.get("service"),
                 data=d.get("data") or {}, chain=d.get("chain"), sha=d.get("commit"))


# --- clean-up ---------------------------------------------------------------------------------

def _strays(pidfile: Path) -> list[int]:
    """Service processes of THIS sandbox (their argv names its unique pidfile): a restart that
    was interrupted before the new process wrote the pidfile leaves one the pidfile misses."""
    found = []
    needle = os.fsencode(str(pidfile))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if _SERVICE_MARKER.encode() in cmdline and needle in cmdline:
            found.append(int(entry.name))
    return found


def _cleanup(sb: Sandbox, keep: bool) -> list[str]:
    """Stop everything the demo started; remove the sandbox unless kept. Problems, if any."""
    problems: list[str] = []
    for rcv in (sb.receiver, sb.bot):
        if rcv is None:
            continue
        try:
            rcv.stop()
        except Exception as e:
            problems.append(f"receiver: {e}")
    try:
        stop(sb.pidfile)
        for pid in _strays(sb.pidfile):
            if not kill_pid(pid):
                problems.append(f"service pid {pid} would not stop")
    except OSError as e:
        problems.append(f"service: {e}")
    if not keep:
        shutil.rmtree(sb.root, ignore_errors=True)
        if sb.root.exists():
            problems.append(f"{sb.root} could not be removed")
    return problems


# --- entry point --------------------------------------------------------------------------------

def run_demo(*, keep: bool = False, out: Narrator | None = None, parent: str | None = None) -> DemoResult:
    """Build the sandbox, replay the incident, check every fact; always clean up.

    Ctrl-C propagates (KeyboardInterrupt → exit 130) after the clean-up has run.
    """
    started = time.monotonic()
    say = _Redacted(out or Quiet())
    root = Path(tempfile.mkdtemp(prefix="opskit-demo-", dir=parent)).resolve()
    state_dir = root / "state"
    sb = Sandbox(root=root, config=root / "etc" / "opskit.toml", state_dir=state_dir, run_dir=root / "run",
                 port=free_port(), webhook_url="", env={})
    result = DemoResult(sandbox=str(root), kept=keep, port=sb.port)
    try:
        try:
            sb.receiver = Receiver.start()
            # A fresh token per run, in the shape of a Discord webhook path.
            sb.webhook_url = (f"http://127.0.0.1:{sb.receiver.port}/discord/"
                              f"{secrets.randbelow(10**18)}/{secrets.token_urlsafe(32)}")
            register_secret(sb.webhook_url)
            sb.bot = Receiver.start()
            sb.bot_token = f"{secrets.randbelow(10**9)}:{secrets.token_urlsafe(26)}"
            register_secret(sb.bot_token)
            sb.env = _environment(root, state_dir, sb.webhook_url)
            sb.env[demo_tap.BOT_TOKEN_ENV] = sb.bot_token
            _setup(sb, say, result)
            result.timings["setup_and_first_deploy"] = time.monotonic() - started
            head, lines, push = _incident(sb, say, result)
            _check(sb, say, result, head, lines, push)
            demo_tap.run(sb, say, result, fact=_fact, service=SERVICE, branch=BRANCH)
        except _Stop:
            pass
        except OpsError as e:
            _fact(say, result, "demo_ran", False, f"the demo could not go on: {e.message}")
        if result.timeline:
            say.step("9. Timeline (seconds since the push)")
            say.timeline(result.timeline)
    except KeyboardInterrupt:
        say.info("interrupted: stopping the service and the receiver"
                 + (f"; the sandbox stays at {root}" if keep else ", removing the sandbox"))
        raise
    finally:
        with _no_interrupts():
            problems = _cleanup(sb, keep)
    running = [pid for pid in result.service_pids if proc.pid_alive(pid)]
    _fact(say, result, "cleaned_up", not problems and not running,
          ("service stopped, receiver stopped" + (f", sandbox kept at {root}" if keep else ", sandbox removed"))
          if not problems and not running else "; ".join(problems + [f"pid {p} still running" for p in running]))
    result.timings["total"] = time.monotonic() - started
    return result


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """A second Ctrl-C must not leave the service running half-way through the clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
