"""opskit.toml (+ .env beside it) → typed, validated settings.

Every problem is a ConfigError naming the file, the key and the fix, so a typo at 3 a.m.
costs one line of reading, not a traceback.
"""

from __future__ import annotations

import fnmatch
import io
import math
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opskit.base import placement, reactions_config
from opskit.base.errors import ConfigError, register_secret
from opskit.base.reactions_config import ReactionSettings
from opskit.base.safety import refuse_as_root

CHANNEL_TYPES = ("discord", "slack", "webhook", "command", "ntfy", "apprise", "telegram")
LEVELS = ("info", "warning", "error", "critical")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A service, channel or job name: it becomes a file name, a lock name and a crontab word.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Secret:
    """A value that must never be printed: repr/str show a mask; .reveal() gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class HealthSettings:
    url: str | None = None
    tcp: str | None = None
    cmd: str | None = None
    window: float = 60.0
    period: float = 2.0
    timeout: float = 2.0
    failures: int = 3
    startup: float = 30.0
    expect_status: tuple[int, ...] | None = None  # None: 200–399
    expect_body: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.url or self.tcp or self.cmd)


@dataclass(frozen=True)
class ChannelSettings:
    name: str
    type: str
    url: Secret | None = None  # discord, slack, webhook, ntfy, apprise
    command: str | None = None  # command: the message arrives on stdin
    token: Secret | None = None  # ntfy access token
    topic: str | None = None  # ntfy, when url is the server
    fallback: str | None = None  # channel that takes permanent failures
    timeout: float = 10.0  # one request
    retry_for: float = 15.0  # transient failures are retried inside this budget
    username: str | None = None  # discord/slack display name
    # Channels a decision can come back through (opskit inbox): telegram's bot, ntfy's reply topic.
    chat_id: str | None = None  # telegram: the chat the bot writes to
    allowed_users: tuple[int, ...] = ()  # telegram: numeric user ids whose taps count
    api_url: str | None = None  # telegram: Bot API server (default the public one)
    reply_url: Secret | None = None  # ntfy: the topic the buttons publish decisions to
    reply_token: Secret | None = None  # ntfy: a credential that can only write reply_url

    @property
    def actionable(self) -> bool:
        """Does a tap on this channel come back to `opskit inbox`?"""
        return self.type == "telegram" or (self.type == "ntfy" and self.reply_url is not None)


@dataclass(frozen=True)
class ServiceSettings:
    name: str
    repo: str
    worktree: Path
    branch: str = "master"
    deploy: str | None = None
    deploy_timeout: float = 300.0
    logs: str | None = None  # prints the service's recent log (deploy/service_logs.py)
    direct_push: bool = False
    feature_branches: tuple[str, ...] = ("feature/*",)
    test: str | None = None
    test_timeout: float = 1800.0
    test_failure: str = "reject"  # reject | human
    review: str | None = None
    review_timeout: float = 1800.0
    sandbox: str = "bwrap"  # bwrap | none: how test and review (pushed code) run
    sandbox_network: bool = False
    sandbox_bind: tuple[str, ...] = ()  # absolute paths shown read-only inside the sandbox
    merge: str = "merge"  # merge | ff
    drift_ignore: tuple[str, ...] = ()
    background: bool = False
    approval_timeout: float = 24 * 3600.0
    notify: tuple[str, ...] | None = None  # None: [opskit] notify
    health: HealthSettings = field(default_factory=HealthSettings)
    user: str | None = None  # the account whose work this is; None: the owner of repo
    hosts: tuple[str, ...] = ()  # fleet: the hosts that run it; with several, they deploy one at a time

    @property
    def pull_mode(self) -> bool:
        """The canonical repo is elsewhere (a URL): cron runs `opskit deploy`."""
        return "://" in self.repo or (":" in self.repo and not self.repo.startswith("/")
                                        and not Path(self.repo).exists())

    def is_feature_branch(self, ref: str) -> bool:
        """A pushed ref that runs the chain: a branch matching `feature_branches` (fnmatch)."""
        if not ref.startswith("refs/heads/"):
            return False
        name = ref[len("refs/heads/"):]
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.feature_branches)


@dataclass(frozen=True)
class CronSettings:
    drift_scan: str = "7 * * * *"
    notify_flush: str = "*/5 * * * *"
    cron_check: str = "*/5 * * * *"
    deploy: str = "* * * * *"
    inbox: str = "* * * * *"  # only installed when a channel carries decisions back
    metrics: str = "* * * * *"  # only installed when [opskit] metrics_textfile is set
    user: str | None = None  # crontab -u USER (root only); default: the user running opskit


@dataclass(frozen=True)
class JobSettings:
    name: str
    schedule: str
    timezone: str | None = None
    grace: float | None = None  # default: 10% of the period, at least 60 s
    max_runtime: float | None = None
    ping_url: Secret | None = None  # healthchecks.io-style ping: /start, then /<exit status>


# --- outside monitoring: the heartbeat and metrics ([opskit] heartbeat*, outbox_alarm, metrics_textfile)
HEARTBEAT_STYLES = ("healthchecks", "uptime-kuma")


@dataclass(frozen=True)
class MonitorSettings:
    heartbeat: Secret | None = None  # a ping URL: every cron-check pings it
    heartbeat_style: str = "healthchecks"  # healthchecks: URL[+fail suffix]; uptime-kuma: ?status=up|down&msg=
    heartbeat_fail: str = "/fail"  # healthchecks style: the suffix of the failure form
    outbox_alarm: float = 1800.0  # seconds a message may wait in the outbox before it needs attention
    metrics_textfile: Path | None = None  # `cron install` adds `opskit metrics --textfile PATH`


@dataclass(frozen=True)
class FleetSettings:
    """`[opskit] journal = "postgresql://…"`: the database the hosts of a fleet share (storage/fleet.py)."""
    url: Secret  # a conninfo URL; the password usually ${VAR} from .env
    host: str  # this host's name in it: `[opskit] host`, default the host name


@dataclass(frozen=True)
class Settings:
    path: Path | None
    state_dir: Path
    notify: tuple[str, ...] = ()
    drift_renotify: float = 24.0  # hours
    channels: Mapping[str, ChannelSettings] = field(default_factory=dict)
    services: Mapping[str, ServiceSettings] = field(default_factory=dict)
    cron: CronSettings = field(default_factory=CronSettings)
    jobs: Mapping[str, JobSettings] = field(default_factory=dict)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    reactions: tuple[ReactionSettings, ...] = ()  # [[reaction]] tables, in config order
    fleet: FleetSettings | None = None  # None: the journal is the state dir's SQLite file alone

    def service(self, name: str) -> ServiceSettings:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            where = self.path or "no config file"
            raise ConfigError(
                f"{where}: unknown service {name!r} (configured: {known}); "
                f"add a [service.{name}] table or fix the name"
            ) from None

    def channel(self, name: str) -> ChannelSettings:
        try:
            return self.channels[name]
        except KeyError:
            known = ", ".join(sorted(self.channels)) or "none"
            where = self.path or "no config file"
            raise ConfigError(
                f"{where}: unknown notify channel {name!r} (configured: {known}); "
                f"add a [notify.{name}] table or fix the name"
            ) from None

    def channels_for(self, service: str | None) -> tuple[str, ...]:
        if service and service in self.services and self.services[service].notify is not None:
            return self.services[service].notify or ()
        return self.notify


# --- lookup ---------------------------------------------------------------------------------

def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """--config, else $OPSKIT_CONFIG, else ./opskit.toml, ~/.config/opskit, /etc/opskit."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("OPSKIT_CONFIG")
    if env:
        return Path(env)
    candidates = [Path.cwd() / "opskit.toml"]
    home = os.environ.get("HOME")
    if home:
        candidates.append(Path(home) / ".config" / "opskit" / "opskit.toml")
    candidates.append(Path("/etc/opskit/opskit.toml"))
    for c in candidates:
        try:
            if c.is_file():
                return c
        except PermissionError:
            # A folder of the search this account may not enter (/etc/opskit is root:opskit 0750;
            # `sudo -u` can keep HOME=/root): one line naming it and the fix, not an internal error.
            from opskit.base.statefs import denied  # the one wording of "cannot read, the fix"

            raise ConfigError(denied(_blocking(c), f"config {c}", "read")) from None
    return None


def _blocking(path: Path) -> Path:
    """The nearest folder above path that this account may not enter (path's own when none)."""
    for parent in reversed(path.parents):
        if parent.is_dir() and not os.access(parent, os.X_OK):
            return parent
    return path.parent


SYSTEM_STATE_DIR = Path("/var/lib/opskit")


def default_state_dir() -> Path:
    env = os.environ.get("OPSKIT_STATE_DIR")
    if env:
        return Path(env)
    # Once `install.sh --system` has made /var/lib/opskit, it is every account's: root's
    # commands, the git account's hooks and the operators' must read one journal, not three.
    if os.geteuid() == 0 or SYSTEM_STATE_DIR.is_dir():
        return SYSTEM_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "opskit"


def load(explicit: str | os.PathLike[str] | None = None) -> Settings:
    path = find_config(explicit)
    if path is None:
        return Settings(path=None, state_dir=default_state_dir())
    return load_file(path)


def load_file(path: Path) -> Settings:
    refuse_as_root(path, "config")
    refuse_as_root(path.parent / ".env", ".env")
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; create it or pass --config PATH") from None
    except PermissionError:
        from opskit.base.statefs import denied  # /etc/opskit is root:opskit 0750 on a server

        folder = path.parent if not os.access(path.parent, os.X_OK) else path
        raise ConfigError(denied(folder, f"config {path}", "read")) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror}); fix its permissions") from None
    try:
        # utf-8-sig: a BOM (Notepad and some editors write one) is not part of the TOML.
        data = tomllib.loads(raw_bytes.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e}); fix the syntax") from None
    env, env_problem = _environment(path.parent / ".env")
    return _Parser(path, env, env_problem).settings(data)


def _environment(env_file: Path) -> tuple[dict[str, str], str | None]:
    """What `${VAR}` may name: the real environment, over the .env beside the config; and why
    the .env could not be read, when it could not (said only if a `${VAR}` then has no value:
    an account that may not read it needs no secret from it unless the config names one).

    The .env is read into this mapping only, never into os.environ: every command opskit runs
    (deploy, and test/review running code from a pushed branch) inherits os.environ, and the
    webhook URLs and tokens kept in .env must not reach them.
    """
    values: dict[str, str] = {}
    problem = None
    if env_file.is_file():
        try:
            text = env_file.read_bytes().decode("utf-8-sig")
        except PermissionError:
            from opskit.base.statefs import denied  # as the config's own refusal

            problem = denied(env_file, f".env {env_file}", "read")
        except OSError as e:
            problem = f"cannot read {env_file} ({e.strerror}); fix its permissions"
        except UnicodeDecodeError:
            problem = f"{env_file} is not UTF-8 text; save it as UTF-8"
        else:
            from dotenv import dotenv_values  # imported only when there is a .env to read

            values = {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}
    return {**values, **os.environ}, problem


# --- validation -----------------------------------------------------------------------------

_Conv = Callable[[str, Any], Any]


class _Parser:
    def __init__(self, path: Path, env: Mapping[str, str], env_problem: str | None = None) -> None:
        self.path = path
        self.env = env
        self.env_problem = env_problem

    def fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}; {fix}")

    # scalar converters ----------------------------------------------------------------------
    def interpolate(self, key: str, value: str) -> str:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.env and self.env_problem:
                raise self.fail(key, f"${{{name}}} is not set, and the .env that may hold it is unreadable",
                                self.env_problem)
            if name not in self.env:
                raise self.fail(key, f"${{{name}}} is not set",
                                f"export {name} or put it in {self.path.parent / '.env'}")
            return self.env[name]

        return _VAR.sub(sub, value)

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_typename(value)}", 'write it in quotes, e.g. key = "…"')
        return self.interpolate(key, value)

    def nonempty(self, key: str, value: Any) -> str:
        s = self.string(key, value)
        if not s.strip():
            raise self.fail(key, "is empty", "give it a value or remove the key")
        return s

    def secret(self, key: str, value: Any) -> Secret:
        return Secret(self.nonempty(key, value))

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_typename(value)}", "write true or false (no quotes)")
        return value

    def positive(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"expected a number of seconds, got {_typename(value)}", "write a number, e.g. 30")
        if not math.isfinite(value):  # TOML allows nan and inf; a timeout of either never ends
            raise self.fail(key, f"must be a finite number, got {value}", "write a number of seconds, e.g. 30")
        if value <= 0:
            raise self.fail(key, f"must be greater than 0, got {value}", "use a positive number")
        return float(value)

    def path_value(self, key: str, value: str) -> Path:
        try:
            return Path(value).expanduser()
        except RuntimeError:  # ~nosuchuser/…
            raise self.fail(key, f"{value!r} names a user this machine does not have",
                            "write an absolute path") from None

    def account(self, key: str, value: Any) -> str:
        name = self.nonempty(key, value)
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise self.fail(key, f"no account {name!r} on this machine",
                            f"create it (useradd --system {name}) or fix the name") from None
        return name

    def count(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected a whole number, got {_typename(value)}", "write an integer, e.g. 3")
        if value < 1:
            raise self.fail(key, f"must be at least 1, got {value}", "use 1 or more")
        return value

    def strings(self, key: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of strings, got {_typename(value)}", 'write ["a", "b"]')
        return tuple(self.interpolate(key, v) for v in value)

    def statuses(self, key: str, value: Any) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise self.fail(key, f"expected a list of HTTP status codes, got {_typename(value)}", "write e.g. [200, 204]")
        for v in value:
            if not 100 <= v <= 599:
                raise self.fail(key, f"{v} is not an HTTP status code", "use codes between 100 and 599")
        return tuple(value)

    def choice(self, *options: str) -> _Conv:
        def conv(key: str, value: Any) -> str:
            s = self.string(key, value)
            if s not in options:
                raise self.fail(key, f"{s!r} is not one of {', '.join(options)}", f"use one of {', '.join(options)}")
            return s

        return conv

    def regex(self, key: str, value: Any) -> str:
        s = self.string(key, value)
        try:
            re.compile(s)
        except re.error as e:
            raise self.fail(key, f"invalid regular expression ({e})", "fix the pattern") from None
        return s

    def cron_expr(self, key: str, value: Any) -> str:
        s = self.nonempty(key, value)
        from opskit.base.schedule import validate_cron  # croniter only when a schedule is set

        problem = validate_cron(s)
        if problem:
            raise self.fail(key, f"{s!r} is not a valid schedule ({problem})",
                            'use five fields, e.g. "*/5 * * * *"')
        return s

    def tz(self, key: str, value: Any) -> str:
        s = self.nonempty(key, value)
        import zoneinfo  # only when a job names a timezone

        try:
            zoneinfo.ZoneInfo(s)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise self.fail(key, f"unknown time zone {s!r}", 'use an IANA name such as "Europe/Berlin"') from None
        return s

    # tables ---------------------------------------------------------------------------------
    def table(self, prefix: str, data: Any, schema: Mapping[str, _Conv]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(prefix, f"expected a table, got {_typename(data)}", f"write it as [{prefix}]")
        out: dict[str, Any] = {}
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else k
            conv = schema.get(k)
            if conv is None:
                known = ", ".join(sorted(schema))
                raise self.fail(key, "unknown key", f"remove it or use one of: {known}")
            out[k] = conv(key, v)
        return out

    def settings(self, data: dict[str, Any]) -> Settings:
        top = {"opskit", "notify", "service", "cron", "jobs", "reaction"}
        for k in data:
            if k not in top:
                raise self.fail(k, "unknown table", f"use one of: {', '.join(sorted(top))}")
        base = self.table("opskit", data.get("opskit", {}), {
            "state_dir": self.nonempty,
            "notify": self.strings,
            "drift_renotify": self.positive,
            "journal": self.journal_url, "host": self.host_name,
            **self.monitor_schema(),
        })
        state_dir = self.path_value("opskit.state_dir", base["state_dir"]) if "state_dir" in base \
            else default_state_dir()

        channels: dict[str, ChannelSettings] = {}
        notify_tables = data.get("notify", {})
        if not isinstance(notify_tables, dict):
            raise self.fail("notify", "expected tables like [notify.ops]", "write [notify.NAME] tables")
        for name, raw in notify_tables.items():
            channels[name] = self.channel(name, raw)

        services: dict[str, ServiceSettings] = {}
        svc_tables = data.get("service", {})
        if not isinstance(svc_tables, dict):
            raise self.fail("service", "expected tables like [service.NAME]", "write [service.NAME] tables")
        for name, raw in svc_tables.items():
            services[name] = self.service(name, raw)

        cron = CronSettings(**self.table("cron", data.get("cron", {}), {
            "drift_scan": self.cron_expr, "notify_flush": self.cron_expr,
            "cron_check": self.cron_expr, "deploy": self.cron_expr, "inbox": self.cron_expr,
            "metrics": self.cron_expr,
            "user": self.nonempty,
        }))

        jobs: dict[str, JobSettings] = {}
        job_tables = data.get("jobs", {})
        if not isinstance(job_tables, dict):
            raise self.fail("jobs", "expected tables like [jobs.NAME]", "write [jobs.NAME] tables")
        for name, raw in job_tables.items():
            self.check_name(f"jobs.{name}", name)
            fields = self.table(f"jobs.{name}", raw, {
                "schedule": self.cron_expr, "timezone": self.tz,
                "grace": self.positive, "max_runtime": self.positive, "ping_url": self.ping_url,
            })
            if "schedule" not in fields:
                raise self.fail(f"jobs.{name}.schedule", "is missing", 'add schedule = "*/5 * * * *"')
            jobs[name] = JobSettings(name=name, **fields)

        placement.check(services.values(), self.fail)
        for svc in services.values():
            self.sandbox_binds(svc, state_dir, list(services.values()))
        settings = Settings(
            path=self.path, state_dir=state_dir, notify=base.get("notify", ()),
            drift_renotify=base.get("drift_renotify", 24.0),
            channels=channels, services=services, cron=cron, jobs=jobs,
            monitor=self.monitor(base),
            reactions=self.reactions(data, services, state_dir),
            fleet=self.fleet(base, services),
        )
        # Every channel named anywhere must exist: a typo here is a silent outage later.
        for where, names in [("opskit.notify", settings.notify)] + [
            (f"service.{s.name}.notify", s.notify or ()) for s in services.values()
        ] + [(f"notify.{c.name}.fallback", (c.fallback,) if c.fallback else ()) for c in channels.values()]:
            for n in names:
                if n not in channels:
                    known = ", ".join(sorted(channels)) or "none"
                    raise self.fail(where, f"names channel {n!r}, which is not configured (configured: {known})",
                                    f"add a [notify.{n}] table or fix the name")
        return settings

    # the fleet: a shared PostgreSQL journal -------------------------------------------------
    def journal_url(self, key: str, value: Any) -> Secret:
        url = self.secret(key, value)
        text = url.reveal()
        if not (text.startswith("postgresql://") or text.startswith("postgres://")):
            # never quoted: it can hold the password
            raise self.fail(key, "is not a postgresql:// URL",
                            'write e.g. "postgresql://opskit:${PGPASSWORD}@db.internal/opskit", '
                            "or remove it for the local SQLite journal")
        from urllib.parse import unquote, urlsplit  # only configs that name a fleet database

        try:
            password = urlsplit(text).password
        except ValueError:
            raise self.fail(key, "is not a valid URL", "check the host and port part") from None
        register_secret(unquote(password) if password else None)  # psycopg's errors may carry it alone
        return url

    def host_name(self, key: str, value: Any) -> str:
        name = self.nonempty(key, value)
        self.check_name(key, name)
        return name

    def fleet(self, base: dict[str, Any], services: Mapping[str, ServiceSettings]) -> FleetSettings | None:
        if "journal" not in base:
            for svc in services.values():
                if len(svc.hosts) > 1:
                    raise self.fail(f"service.{svc.name}.hosts", "names several hosts, but there is no fleet journal",
                                    'set [opskit] journal = "postgresql://…", or list one host')
            return None
        import socket  # only configs that name a fleet database

        return FleetSettings(url=base["journal"], host=base.get("host") or socket.gethostname())

    # outside monitoring ---------------------------------------------------------------------
    def monitor_schema(self) -> dict[str, _Conv]:
        return {"heartbeat": self.ping_url, "heartbeat_style": self.choice(*HEARTBEAT_STYLES),
                "heartbeat_fail": self.nonempty, "outbox_alarm": self.positive,
                "metrics_textfile": self.nonempty}

    def ping_url(self, key: str, value: Any) -> Secret:
        url = self.secret(key, value)
        if check_url(url.reveal()):  # the message names the key, never the URL: it holds the check's secret
            raise self.fail(key, "is not an http(s) URL", 'use e.g. "https://hc-ping.com/${HC_UUID}"')
        return url

    def monitor(self, base: dict[str, Any]) -> MonitorSettings:
        fields = {k: base[k] for k in self.monitor_schema() if k in base}
        if "metrics_textfile" in fields:
            p = self.path_value("opskit.metrics_textfile", fields["metrics_textfile"])
            if not p.is_absolute() or not p.name.endswith(".prom"):
                raise self.fail("opskit.metrics_textfile", f"{p} is not an absolute path ending in .prom",
                                'write e.g. "/var/lib/node_exporter/textfile_collector/opskit.prom"')
            fields["metrics_textfile"] = p
        return MonitorSettings(**fields)
    def reactions(self, data: dict[str, Any], services: Mapping[str, ServiceSettings],
                  state_dir: Path) -> tuple[ReactionSettings, ...]:
        if "reaction" not in data:
            return ()
        from opskit.base import bus  # the trigger: only configs with [[reaction]] tables load it

        found = reactions_config.parse(self, data["reaction"], services)
        # Each process that journals an event starts the dispatcher when one of these matches.
        bus.watch(state_dir, self.path, found)
        return found

    def url_problem(self, url: str) -> str | None:
        return check_url(url)

    def sandbox_binds(self, svc: ServiceSettings, state_dir: Path, services: list[ServiceSettings]) -> None:
        """sandbox_bind shows the operator's tools, never what the sandbox exists to hide: the
        state dir, the config and its .env, a service's repo or deployed worktree. A path that
        does not exist yet is doctor's warning, not an error here."""
        key = f"service.{svc.name}.sandbox_bind"
        cfg = self.path.resolve()
        guarded = [(state_dir, "the state dir", True), (cfg, "the config", False),
                   (cfg.parent / ".env", "the .env beside the config", False)]
        for s in services:
            guarded.append((s.worktree, f"service {s.name}'s deployed worktree", True))
            if not s.pull_mode:
                guarded.append((Path(s.repo), f"service {s.name}'s bare repo", True))
        for b in svc.sandbox_bind:
            if not b.startswith("/"):
                raise self.fail(key, f"{b!r} is not an absolute path", 'write e.g. sandbox_bind = ["/opt/tools"]')
            p = Path(os.path.normpath(b))
            real = p.resolve()
            for g, what, inside_too in guarded:
                gr = g.resolve()
                if gr.is_relative_to(real) or (inside_too and real.is_relative_to(gr)):
                    how = "is" if gr == real else "contains" if gr.is_relative_to(real) else "is in"
                    raise self.fail(key, f"{b} {how} {what} ({g}), "
                                    "which the sandbox hides from pushed code",
                                    "bind a folder that holds only the tools (e.g. the virtualenv)")

    def host_names(self, key: str, value: Any) -> tuple[str, ...]:
        names = self.strings(key, value)
        for n in names:
            self.check_name(key, n)
        return names

    def check_name(self, key: str, name: str) -> None:
        if not NAME.match(name):
            raise self.fail(key, f"name {name!r} has characters opskit does not allow",
                            "use letters, digits, '.', '_' and '-'")

    def channel(self, name: str, raw: Any) -> ChannelSettings:
        key = f"notify.{name}"
        self.check_name(key, name)
        fields = self.table(key, raw, {
            "type": self.choice(*CHANNEL_TYPES), "url": self.secret, "command": self.nonempty,
            "token": self.secret, "topic": self.nonempty, "fallback": self.nonempty,
            "timeout": self.positive, "retry_for": self.positive, "username": self.nonempty,
            "chat_id": self.chat_id, "allowed_users": self.user_ids, "api_url": self.nonempty,
            "reply_url": self.secret, "reply_token": self.secret,
        })
        kind = fields.get("type")
        if kind is None:
            raise self.fail(f"{key}.type", "is missing", f"add type = one of {', '.join(CHANNEL_TYPES)}")
        if kind == "telegram":
            self.telegram(key, fields)
        elif kind == "command":
            if "command" not in fields:
                raise self.fail(f"{key}.command", "is missing", 'add command = "…" (the message arrives on stdin)')
        elif "url" not in fields:
            raise self.fail(f"{key}.url", "is missing", f'add url = "${{{name.upper().replace("-", "_")}_URL}}"')
        if "url" in fields and kind != "apprise":
            u = fields["url"].reveal()
            if not re.match(r"^https?://[^/\s]+", u):
                raise self.fail(f"{key}.url", "is not an http(s) URL", "use https://… (or http:// on loopback)")
        if fields.get("fallback") == name:
            raise self.fail(f"{key}.fallback", "names the channel itself", "name another channel or remove it")
        return ChannelSettings(name=name, **fields)

    def telegram(self, key: str, fields: dict[str, Any]) -> None:
        for required, example in (("token", '"${TELEGRAM_TOKEN}" (from @BotFather)'),
                                  ("chat_id", '"-1001234567890" (see the README: approve from your phone)')):
            if required not in fields:
                raise self.fail(f"{key}.{required}", "is missing", f"add {required} = {example}")
        if "api_url" in fields and check_url(fields["api_url"]):
            raise self.fail(f"{key}.api_url", "is not an http(s) URL", "use https://api.telegram.org or your Bot API server")

    def chat_id(self, key: str, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        text = self.nonempty(key, value)
        if not (text.lstrip("-").isdigit() or text.startswith("@")):
            raise self.fail(key, f"{text!r} is not a chat id", 'use the numeric id, e.g. -1001234567890, or "@channelname"')
        return text

    def user_ids(self, key: str, value: Any) -> tuple[int, ...]:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                  for v in value):
            raise self.fail(key, f"expected a list of numeric Telegram user ids, got {_typename(value)}",
                            "write e.g. allowed_users = [123456789] (ask @userinfobot for yours)")
        return tuple(value)

    def service(self, name: str, raw: Any) -> ServiceSettings:
        key = f"service.{name}"
        self.check_name(key, name)
        if not isinstance(raw, dict):
            raise self.fail(key, f"expected a table, got {_typename(raw)}", f"write it as [{key}]")
        raw = dict(raw)
        health_raw = raw.pop("health", {})
        fields = self.table(key, raw, {
            "repo": self.nonempty, "worktree": self.nonempty, "branch": self.nonempty,
            "deploy": self.nonempty, "deploy_timeout": self.positive, "logs": self.nonempty,
            "direct_push": self.boolean,
            "feature_branches": self.strings, "test": self.nonempty, "test_timeout": self.positive,
            "test_failure": self.choice("reject", "human"), "review": self.nonempty,
            "review_timeout": self.positive, "merge": self.choice("merge", "ff"),
            "sandbox": self.choice("bwrap", "none"), "sandbox_network": self.boolean,
            "sandbox_bind": self.strings,
            "drift_ignore": self.strings, "background": self.boolean,
            "approval_timeout": self.positive, "notify": self.strings, "user": self.account,
            "hosts": self.host_names,
        })
        for required in ("repo", "worktree"):
            if required not in fields:
                raise self.fail(f"{key}.{required}", "is missing",
                                f"add {required} = \"…\"")
        fields["worktree"] = self.path_value(f"{key}.worktree", fields["worktree"])
        health = HealthSettings(**self.health(f"{key}.health", health_raw))
        return ServiceSettings(name=name, health=health, **fields)

    def health(self, key: str, raw: Any) -> dict[str, Any]:
        fields = self.table(key, raw, {
            "url": self.nonempty, "tcp": self.nonempty, "cmd": self.nonempty,
            "window": self.positive, "period": self.positive, "timeout": self.positive,
            "failures": self.count, "startup": self.positive,
            "expect_status": self.statuses, "expect_body": self.regex,
        })
        probes = [k for k in ("url", "tcp", "cmd") if k in fields]
        if len(probes) > 1:
            raise self.fail(key, f"sets {' and '.join(probes)}", "keep exactly one of url, tcp, cmd")
        if "url" in fields:
            problem = check_url(fields["url"])
            if problem:
                raise self.fail(f"{key}.url", problem, "use http://host:port/path")
        if "tcp" in fields:
            problem = check_hostport(fields["tcp"])
            if problem:
                raise self.fail(f"{key}.tcp", problem, 'use "host:port", e.g. "127.0.0.1:9400"')
        return fields


def check_url(url: str) -> str | None:
    """None if url is a usable http(s) URL, else what is wrong with it."""
    m = re.match(r"^(https?)://(\[[^\]]+\]|[^/:\s]+)(?::(\d+))?(/\S*)?$", url)
    if not m:
        return f"{url!r} is not an http(s) URL"
    if m.group(3) is not None and not 0 < int(m.group(3)) < 65536:
        return f"port {m.group(3)} is out of range"
    return None


def check_hostport(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"{value!r} is not host:port"
    if not 0 < int(port) < 65536:
        return f"port {port} is out of range"
    return None


def _typename(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
