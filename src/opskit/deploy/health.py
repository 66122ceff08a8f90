"""Health probes and the gate's verdict.

The gate replaces the seed's "sleep 60 and hope": it probes every `period` seconds and
returns the moment the rule is met (fail-fast), not at the end of the window.

- fail: `failures` consecutive probes fail after the first healthy one, or no probe was
  healthy within `startup` seconds;
- pass: `window` seconds (from the gate's start) passed with no fail and the last probe
  healthy; if the last probe at window end was unhealthy, keep probing until one is healthy
  again or the failure rule fires.

Deadlines and sleeps use the injected Clock (a FakeClock makes a gate instant in tests);
the probes themselves are always real. Redirects are not followed: a 3xx is inside the
default healthy range 200–399, and following one would probe something else than the
configured target. httpx is imported only by the HTTP probe (hooks import this module).
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opskit.base import proc
from opskit.base.accounts import drop_for
from opskit.base.clock import SYSTEM, Clock, iso_precise
from opskit.base.config import HealthSettings, check_hostport, check_url
from opskit.base.errors import OpsError, UsageError, redact

if TYPE_CHECKING:
    import httpx  # start-up: only the HTTP probe needs it

    from opskit.storage.journal import Journal

# A cmd probe's argv → the argv that runs it (in the sandbox for pushed code: bwrap.probe_wrapper).
Wrap = Callable[[list[str]], list[str]]
# Floating-point slack when comparing elapsed time with a deadline the loop aimed at exactly.
_EPS = 1e-6
PROBE_LOG_MAX = 120  # probes kept in a health event (the first and last half of a long gate)
# Enough of a body to match `expect_body` against without reading a megabyte page.
_BODY_LIMIT = 64 * 1024


@dataclass
class ProbeResult:
    at: float  # seconds since the gate started
    ok: bool
    detail: str  # "HTTP 200 in 12ms" | "Connection refused" | "timed out after 2.0s" | ...
    status: int | None = None
    elapsed: float = 0.0  # how long the probe itself took (real seconds)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = round(self.at, 3)
        d["elapsed"] = round(self.elapsed, 3)
        return d


@dataclass
class Verdict:
    healthy: bool
    reason: str  # one line; on fail it names the last error as the client saw it
    target: str  # "GET http://127.0.0.1:9400/health" | "tcp 127.0.0.1:9400" | "cmd: ..."
    probes: list[ProbeResult] = field(default_factory=list)
    duration: float = 0.0
    event_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "reason": self.reason,
            "target": self.target,
            "duration": round(self.duration, 3),
            "event_id": self.event_id,
            "probes": [p.to_dict() for p in self.probes],
        }


# --- validation -------------------------------------------------------------------------------

def validate(spec: HealthSettings) -> None:
    """UsageError (one line, naming the fix) unless spec can be gated."""
    probes = [k for k in ("url", "tcp", "cmd") if getattr(spec, k)]
    if not probes:
        raise UsageError("no health probe: give --url URL, --tcp HOST:PORT or --cmd COMMAND "
                         "(or a SERVICE with a [service.NAME.health] table)")
    if len(probes) > 1:
        raise UsageError(f"both {' and '.join(probes)} given; keep exactly one of --url, --tcp, --cmd")
    if spec.url:
        problem = check_url(spec.url)
        if problem:
            raise UsageError(f"bad health url: {problem}; use http://host:port/path")
    if spec.tcp:
        problem = check_hostport(spec.tcp)
        if problem:
            raise UsageError(f"bad tcp target: {problem}; use HOST:PORT, e.g. 127.0.0.1:9400")
    for name in ("window", "period", "timeout", "startup"):
        value = getattr(spec, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"--{name} must be a positive number of seconds, got {value!r}")
    if isinstance(spec.failures, bool) or not isinstance(spec.failures, int) or spec.failures < 1:
        raise UsageError(f"--failures must be a whole number of 1 or more, got {spec.failures!r}")
    if spec.expect_status is not None:
        if not spec.expect_status or any(not 100 <= s <= 599 for s in spec.expect_status):
            raise UsageError("--expect-status: use HTTP codes 100-599, e.g. 200,204 or 200-299")
    if spec.expect_body is not None:
        try:
            re.compile(spec.expect_body)
        except re.error as e:
            raise UsageError(f"--expect-body is not a valid regular expression ({e})") from None


def parse_expect_status(text: str) -> tuple[int, ...]:
    """`200,204` or `200-299` (or a mix) → the codes; UsageError for anything else."""
    codes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{3})(?:-(\d{3}))?", part)
        if not m:
            raise UsageError(f"--expect-status: {part!r} is not a status or range; "
                             "use e.g. 200,204 or 200-299")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 100 <= lo <= hi <= 599:
            raise UsageError(f"--expect-status: {part!r} is not within 100-599 (low-high); "
                             "use e.g. 200-299")
        codes.extend(c for c in range(lo, hi + 1) if c not in codes)
    return tuple(codes)


def describe_target(spec: HealthSettings) -> str:
    if spec.url:
        return redact(f"GET {spec.url}")
    if spec.tcp:
        return f"tcp {spec.tcp}"
    return redact(f"cmd: {spec.cmd}")


# --- probes -----------------------------------------------------------------------------------

def _seconds(value: float) -> str:
    return f"{float(value)}s"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms"


def _os_error(e: OSError) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "Connection refused"
    return e.strerror or str(e) or type(e).__name__


class _Prober:
    """One probe kind, reused across a gate (one HTTP client, not one per probe)."""

    def __init__(self, spec: HealthSettings, cwd: Path | None = None, wrap: Wrap | None = None) -> None:
        self.spec = spec
        self.cwd = cwd
        self.wrap = wrap  # the cmd probe's sandbox (bwrap.probe_wrapper), if any
        self._client: httpx.Client | None = None
        self._body_re = re.compile(spec.expect_body) if spec.expect_body is not None else None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def probe(self, at: float) -> ProbeResult:
        if self.spec.url:
            self._http_client()  # the import and TLS set-up are not the service's latency
        start = time.monotonic()
        if self.spec.url:
            ok, detail, status = self._http()
        elif self.spec.tcp:
            ok, detail, status = self._tcp()
        else:
            ok, detail, status = self._cmd()
        return ProbeResult(at=at, ok=ok, detail=redact(detail), status=status,
                           elapsed=time.monotonic() - start)

    # -- http --
    def _http_client(self) -> httpx.Client:
        import httpx  # here, not at module level: hooks import health without probing HTTP

        spec = self.spec
        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(spec.timeout),
                follow_redirects=False,
                # A new connection per probe: a service that stopped accepting must not hide
                # behind a kept-alive socket.
                limits=httpx.Limits(max_keepalive_connections=0),
                headers={"User-Agent": "opskit-health-gate"},
            )
        return self._client

    def _http(self) -> tuple[bool, str, int | None]:
        import httpx  # start-up: only the HTTP probe needs it

        spec = self.spec
        assert spec.url
        client = self._http_client()
        start = time.monotonic()
        try:
            with client.stream("GET", spec.url) as resp:
                body = b""
                if self._body_re is not None and _status_ok(resp.status_code, spec.expect_status):
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if len(body) >= _BODY_LIMIT or time.monotonic() - start > spec.timeout:
                            break
        except httpx.TimeoutException:
            return False, f"timed out after {_seconds(spec.timeout)}", None
        except httpx.ConnectError as e:
            detail = _connect_error(e)
            if "not known" in detail or "name resolution" in detail.lower():
                detail = f"cannot resolve {httpx.URL(spec.url).host}: {detail}"
            return False, detail, None
        except httpx.RemoteProtocolError:
            return False, "connection closed without a response", None
        except httpx.HTTPError as e:
            return False, _strip_errno(str(e)) or type(e).__name__, None
        elapsed = time.monotonic() - start
        status = resp.status_code
        # httpx bounds each phase by `timeout`, not the whole request: a reply that trickled
        # in past the budget is as unhealthy as one that never came.
        if elapsed > spec.timeout:
            return False, f"timed out after {_seconds(spec.timeout)}", status
        if not _status_ok(status, spec.expect_status):
            return False, f"HTTP {status}", status
        if self._body_re is not None:
            text = body[:_BODY_LIMIT].decode("utf-8", "replace")
            if not self._body_re.search(text):
                # Said, so nobody hunts for a match that sits past the part we read.
                cut = f" in its first {_BODY_LIMIT // 1024} KiB (the rest was not read)" \
                    if len(body) >= _BODY_LIMIT else ""
                return False, f"body did not match {spec.expect_body!r}{cut}", status
        return True, f"HTTP {status} in {_ms(elapsed)}", status

    # -- tcp --
    def _tcp(self) -> tuple[bool, str, int | None]:
        assert self.spec.tcp
        host, _, port = self.spec.tcp.rpartition(":")
        host = host.strip("[]")
        start = time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=self.spec.timeout):
                pass
        except TimeoutError:
            return False, f"timed out after {_seconds(self.spec.timeout)}", None
        except socket.gaierror as e:
            return False, f"cannot resolve {host}: {e.strerror}", None
        except OSError as e:
            return False, _os_error(e), None
        return True, f"TCP connect in {_ms(time.monotonic() - start)}", None

    # -- cmd --
    def _cmd(self) -> tuple[bool, str, int | None]:
        assert self.spec.cmd
        argv = proc.shell_argv(self.spec.cmd)
        if self.wrap is not None:
            try:
                argv = self.wrap(argv)
            except OpsError as e:  # no sandbox: the probe fails, it never runs unsandboxed
                return False, str(e), None
        # As root, the probe runs as the account owning the worktree it runs in.
        # A sandboxed probe is code from the pushed tree: the same allowlisted environment as a test.
        env = proc.untrusted_env() if self.wrap is not None else proc.clean_env()
        result = proc.run(argv, cwd=self.cwd, env=env, timeout=self.spec.timeout, tail_lines=5,
                          user=drop_for(self.cwd) if self.cwd else None)
        if result.timed_out:
            return False, f"timed out after {_seconds(self.spec.timeout)}", None
        last = next((ln.strip() for ln in reversed(result.tail) if ln.strip()), "")
        if result.returncode == 0:
            return True, f"exit 0 in {_ms(result.duration)}", None
        how = (f"killed by signal {-result.returncode}" if result.returncode < 0
               else f"exit {result.returncode}")
        return False, f"{how}: {last[:200]}" if last else how, None


def _status_ok(status: int, expect: tuple[int, ...] | None) -> bool:
    return 200 <= status <= 399 if expect is None else status in expect


def _strip_errno(text: str) -> str:
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text).strip()


def _connect_error(e: Exception) -> str:
    text = str(e)
    if "refused" in text.lower():
        return "Connection refused"
    return _strip_errno(text) or "connect failed"


def probe_once(spec: HealthSettings, *, cwd: Path | None = None) -> ProbeResult:
    """One probe, for `opskit status` / `doctor`."""
    validate(spec)
    prober = _Prober(spec, cwd)
    try:
        return prober.probe(0.0)
    finally:
        prober.close()


# --- the gate ---------------------------------------------------------------------------------

def run_gate(spec: HealthSettings, *, clock: Clock = SYSTEM,
             on_probe: Callable[[ProbeResult], None] | None = None,
             cwd: Path | None = None, wrap: Wrap | None = None) -> Verdict:
    """Probe until the verdict rule is met; journals nothing (see gate()).

    KeyboardInterrupt propagates: an interrupted gate has no verdict.
    """
    validate(spec)
    target = describe_target(spec)
    prober = _Prober(spec, cwd, wrap)
    probes: list[ProbeResult] = []
    start = clock.monotonic()
    seen_healthy = False
    consecutive = 0

    def done(healthy: bool, reason: str) -> Verdict:
        return Verdict(healthy=healthy, reason=redact(reason), target=target, probes=probes,
                       duration=clock.monotonic() - start)

    try:
        while True:
            t0 = clock.monotonic()
            result = prober.probe(t0 - start)
            probes.append(result)
            if on_probe is not None:
                on_probe(result)
            elapsed = clock.monotonic() - start
            if result.ok:
                seen_healthy = True
                consecutive = 0
                if elapsed + _EPS >= spec.window:
                    return done(True, f"healthy for {elapsed:.1f}s ({len(probes)} probes, "
                                      f"last: {result.detail})")
            elif seen_healthy:
                consecutive += 1
                if consecutive >= spec.failures:
                    return done(False, f"{consecutive} consecutive probes failed after it was "
                                       f"healthy (last: {result.detail})")
            elif elapsed + _EPS >= spec.startup:
                return done(False, f"no healthy probe within {spec.startup:g}s startup "
                                   f"(last: {result.detail})")
            # Aim the next probe at the deadline that could decide the verdict, so a gate
            # ends at `window` / `startup`, not up to a period later.
            next_at = t0 + spec.period
            if not seen_healthy:
                next_at = min(next_at, start + spec.startup)
            elif result.ok:
                next_at = min(next_at, start + spec.window)
            clock.sleep(max(0.0, next_at - clock.monotonic()))
    finally:
        prober.close()


def gate(spec: HealthSettings, *, journal: Journal, service: str | None = None,
         chain: str | None = None, sha: str | None = None, clock: Clock = SYSTEM,
         on_probe: Callable[[ProbeResult], None] | None = None,
         cwd: Path | None = None, wrap: Wrap | None = None, sandbox: str | None = None,
         on_fail: Callable[[], dict[str, Any]] | None = None) -> Verdict:
    """run_gate() and journal health.pass / health.fail; sets verdict.event_id. `sandbox`: how a
    cmd probe ran ("bwrap" | "none"), recorded in the event. on_fail: more data for health.fail
    (the service's own log, deploy/service_logs.py), asked for right after the verdict."""
    started = clock.now()
    verdict = run_gate(spec, clock=clock, on_probe=on_probe, cwd=cwd, wrap=wrap)
    failed = sum(1 for p in verdict.probes if not p.ok)
    # When each probe ran and what it said, so `opskit incident` can tell downtime from the
    # probes themselves (first failed → first healthy), not from the events around them.
    shown = verdict.probes if len(verdict.probes) <= PROBE_LOG_MAX else \
        verdict.probes[:PROBE_LOG_MAX // 2] + verdict.probes[-PROBE_LOG_MAX // 2:]
    event = journal.append(
        "health.pass" if verdict.healthy else "health.fail",
        service,
        {
            "target": verdict.target,
            "reason": verdict.reason,
            "probes": len(verdict.probes),
            "failed_probes": failed,
            "duration": round(verdict.duration, 3),
            "window": spec.window,
            "startup": spec.startup,
            "failures": spec.failures,
            "period": spec.period,
            "timeout": spec.timeout,
            "started": iso_precise(started),
            "probe_log": [[round(p.at, 3), p.ok, p.detail] for p in shown],
            **({"sandbox": sandbox} if sandbox is not None else {}),
            **(on_fail() if on_fail is not None and not verdict.healthy else {}),
        },
        chain=chain,
        sha=sha,
    )
    verdict.event_id = event.id
    return verdict


# --- what the pusher sees -------------------------------------------------------------------
# A good push is a few lines however long the window (the journal keeps every probe); a failing
# gate shows its failing probes, the last FAILED_SHOWN of them. Whole lines, no `\r` progress:
# through git's sideband the pusher's stderr is not a terminal, and hookmain escapes control
# characters anyway (tests/test_quiet_push.py).
FAILED_SHOWN = 5


def start_line(spec: HealthSettings) -> str:
    return (f"health: probing {describe_target(spec)} every {spec.period:g}s for {spec.window:g}s "
            f"(startup {spec.startup:g}s, {spec.failures} failed in a row fail it)…")


def verdict_lines(verdict: Verdict) -> list[str]:
    """The gate's verdict for the pusher: one line on a pass; the failing probes and one line on a fail."""
    n = len(verdict.probes)
    failed = [p for p in verdict.probes if not p.ok]
    counts = f"{n - len(failed)}/{n} probes ok, {len(failed)} failed, in {verdict.duration:.1f}s"
    if verdict.healthy:
        last_bad = f"; last failed +{failed[-1].at:.1f}s: {failed[-1].detail}" if failed else ""
        return [f"✔ healthy: {counts}{last_bad}"]
    lines = []
    hidden = len(failed) - FAILED_SHOWN
    if hidden > 0:
        where = f": opskit incident {verdict.event_id}" if verdict.event_id else ""
        lines.append(f"  … {hidden} earlier failed probe(s) not shown (every probe{where})")
    lines += [f"  probe +{p.at:.1f}s BAD {p.detail}" for p in failed[-FAILED_SHOWN:]]
    lines.append(f"✘ health gate failed: {verdict.reason} ({counts})")
    return lines


def override(spec: HealthSettings, **changes: Any) -> HealthSettings:
    """spec with the given non-None fields replaced; a new probe kind replaces the old one."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if any(k in changes for k in ("url", "tcp", "cmd")):
        for k in ("url", "tcp", "cmd"):
            changes.setdefault(k, None)
    return replace(spec, **changes)
