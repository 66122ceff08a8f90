"""Shared fixtures. Tests stay out of $HOME, the real crontab and the real state dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gitsandbox import Sandbox, make_sandbox
from tests.support.postgres import Postgres
from tests.support.procs import end_leftovers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The run fails when anything a test started is alive at its end (the per-test check
    below names the test; this one also catches processes given an environment of their own)."""
    yield
    end_leftovers(tmp_path_factory.getbasetemp(), "the test session")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(state))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("OPSKIT_CRON_D", str(home / "cron.d-opskit"))  # never the host's /etc/cron.d
    monkeypatch.delenv("OPSKIT_CONFIG", raising=False)
    monkeypatch.delenv("OPSKIT_BREAK_GLASS", raising=False)
    for k in list(os.environ):
        if k.startswith("GIT_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "author@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Committer")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "committer@example.invalid")
    (home / ".gitconfig").write_text(
        "[init]\n\tdefaultBranch = master\n[advice]\n\tdetachedHead = false\n"
        "[protocol \"file\"]\n\tallow = always\n"
    )
    # Start each test from a clean in-process secret registry and CLI state.
    from opskit.commands import _common

    monkeypatch.setattr(_common, "STATE", _common._State())
    yield home
    # Torn down after the test's own fixtures (this one is set up first): what they stop is
    # stopped by now. A child of the test carries this HOME in its environment.
    end_leftovers(home, "this test")


@pytest.fixture
def state_dir() -> Path:
    return Path(os.environ["OPSKIT_STATE_DIR"])


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path / "sb")


RunOpskit = Callable[..., subprocess.CompletedProcess[str]]


# bench/mutation.sh sets this: mutmut switches a mutant on inside the test process only, so a
# command run as a subprocess would run the unmutated code and kill nothing. In-process runs
# keep what a subprocess gives a test (its own environment, cwd, stdin, stdout, stderr, exit code).
IN_PROCESS = os.environ.get("OPSKIT_TESTS_IN_PROCESS") == "1"


@pytest.fixture
def opskit() -> RunOpskit:
    """Run the real `opskit` CLI in a subprocess: opskit("events", "--json", input=..., cwd=...)."""

    def run(*args: str, input: str | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        e = dict(os.environ)
        if env:
            e.update(env)
        if IN_PROCESS:
            return _in_process(list(args), input, cwd, e)
        return subprocess.run([sys.executable, "-m", "opskit", *args], check=False, input=input, cwd=cwd, env=e,
                              capture_output=True, text=True, timeout=timeout, errors="replace")

    return run


def _in_process(args: list[str], input: str | None, cwd: Path | None,
                env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import contextlib
    import io
    import signal

    from opskit import cli
    from opskit.commands import _common
    from opskit.storage import fallback

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved = (_common.STATE, _common._console, _common._err_console, sys.stdin)
    saved_term, saved_warned = signal.getsignal(signal.SIGTERM), set(fallback._WARNED)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        _common.STATE, _common._console, _common._err_console = _common._State(), None, None
        sys.stdin = io.StringIO(input or "")
        fallback._WARNED.clear()  # a new process would warn again
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(args)
            except SystemExit as e:  # what a process would have exited with
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        _common.STATE, _common._console, _common._err_console, sys.stdin = saved
        signal.signal(signal.SIGTERM, saved_term)
        fallback._WARNED.clear()
        fallback._WARNED.update(saved_warned)
    return subprocess.CompletedProcess(["opskit", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "opskit.toml") -> Path:
        p = tmp_path / "conf" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    return write


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """A real PostgreSQL for the session (tests/support/postgres.py); skipped, with the reason,
    where the server binaries or psycopg are missing."""
    server = Postgres()
    server.init()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def fleet_url(postgres_server: Postgres) -> Iterator[str]:
    """The URL of a new, empty database on the session's server (not migrated yet)."""
    db = postgres_server.database()
    yield postgres_server.url(db)
    postgres_server.drop(db)
