"""The fast path (opskit/fastpath.py) reads `events` and `drift-scan` without Typer: it must say
exactly what Typer's path says, know the same options, and leave everything else to Typer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from opskit import cli, fastpath
from opskit.commands import _common
from opskit.storage import event_types
from opskit.storage.journal import Journal
from tests.support.gitsandbox import Sandbox


def _typer_command(name: str):  # type: ignore[no-untyped-def]
    import typer

    return typer.main.get_command(cli.app).commands[name]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(fastpath.COMMANDS))
def test_the_fast_path_knows_the_typer_commands_options_by_the_same_names(name: str) -> None:
    spec = fastpath.COMMANDS[name]
    typer_opts: dict[str, tuple[str, str]] = {}
    positional = None
    for p in _typer_command(name).params:
        if p.param_type_name == "argument":
            positional = p.name
            continue
        if p.is_flag:
            kind = "flag"
        elif p.type.name in ("integer range", "int range"):
            assert (p.type.min, p.type.max, p.type.min_open) == (1, None, False)
            kind = "int>=1"
        else:
            assert p.type.name in ("text", "str"), (p.name, p.type.name)
            kind = "str"
        for flag in [*p.opts, *p.secondary_opts]:
            typer_opts[flag] = (p.name, kind)
    assert spec.options == typer_opts
    assert spec.positional == positional


def _both(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
          ) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    assert fastpath.match(args) is not None, f"{args} should take the fast path"
    out = []
    for fast in (True, False):
        monkeypatch.setattr(_common, "STATE", _common._State())
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(fastpath, "match", lambda a: None)
            code = cli.main(list(args))
        o, e = capsys.readouterr()
        out.append((code, o, e))
    return out[0], out[1]


def _journal(state_dir: Path) -> None:
    j = Journal(state_dir)
    for i in range(30):
        j.append(("deploy.start", "health.pass", "health.fail", "rollback.complete")[i % 4],
                 ("primerouter", "api")[i % 2], {"sha": f"{i:040x}", "note": "a\x1b[31mred"})
    j.close()


@pytest.mark.parametrize("args", [
    ["events"],
    ["events", "--limit", "5"],
    ["events", "-n", "3", "--json"],
    ["events", "--limit=7", "--service", "api"],
    ["events", "-s", "primerouter", "-t", "health"],
    ["events", "--type=rollback", "--json", "--limit", "2", "--limit", "4"],
    ["events", "--since", "2h"],
    ["events", "--since", "yesterday"],  # refused the same way: exit 2, one line
    ["events", "--service", "nobody"],
    ["events", "--limit", "99999999999999999999"],  # more than SQLite's integers: all of them, exit 0
])
def test_events_fast_and_through_typer_say_the_same(args: list[str], state_dir: Path, monkeypatch,
                                                    capsys) -> None:
    _journal(state_dir)
    fast, slow = _both(args, monkeypatch, capsys)
    assert fast == slow
    assert fast[0] == (2 if "yesterday" in args else 0), fast


MIXED = ("deploy.start", "health.fail", "rollback.start", "health.pass", "rollback.complete", "health.fail",
         "notify.sent", "rollback.fail")


@pytest.mark.parametrize("spec, want", [
    ("health.fail,rollback.", ["health.fail", "rollback.start", "rollback.complete", "health.fail", "rollback.fail"]),
    ("rollback.", ["rollback.start", "rollback.complete", "rollback.fail"]),
    ("rollback", ["rollback.start", "rollback.complete", "rollback.fail"]),  # the form notifications cite
    (" health.fail , rollback.complete,health.fail", ["health.fail", "rollback.complete", "health.fail"]),
])
def test_events_type_takes_a_comma_list_of_types_and_prefixes(spec: str, want: list[str], state_dir: Path,
                                                              monkeypatch, capsys) -> None:
    j = Journal(state_dir)
    for t in MIXED:
        j.append(t, "api", {})
    j.close()
    for head in (["--type", spec], [f"--type={spec}"], ["-t", spec]):
        fast, slow = _both(["events", "--json", *head], monkeypatch, capsys)
        assert fast == slow and fast[0] == 0 and fast[2] == "", fast
        events = [json.loads(ln) for ln in fast[1].splitlines()]
        assert [e["type"] for e in events] == want  # both kinds, in the journal's order
        assert [e["id"] for e in events] == sorted(e["id"] for e in events)


@pytest.mark.parametrize("spec, bad", [
    ("health.fial", "health.fial"), ("health.fail,rollback.completed", "rollback.completed"),
    ("heal", "heal"), ("rollback.x.", "rollback.x."), (".", "."), ("health.fail,nope.", "nope."),
])
def test_an_unknown_event_type_is_exit_2_naming_the_known_ones(spec: str, bad: str, state_dir: Path,
                                                               monkeypatch, capsys) -> None:
    _journal(state_dir)
    fast, slow = _both(["events", "--type", spec], monkeypatch, capsys)
    assert fast == slow
    code, out, err = fast
    assert code == 2 and out == "" and err.count("\n") == 1, fast
    assert err.startswith(f"opskit: --type: unknown event type {bad!r} ")
    assert "push.received|superseded|fail|verified|unverified, test.pass|fail|skipped" in err
    assert "rollback.start|complete|fail" in err and "decision.received|refused|applied" in err


def test_events_follow_honours_the_type_filter(state_dir: Path) -> None:
    j = Journal(state_dir)
    j.append("rollback.start", "api", {})
    env = {**os.environ, "OPSKIT_STATE_DIR": str(state_dir)}
    p = subprocess.Popen([sys.executable, "-m", "opskit", "events", "--follow", "--json", "--type",
                          "health.fail,rollback."], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stop = threading.Timer(20, p.kill)  # a missing line must fail the test, not hang it
    stop.start()
    try:
        assert p.stdout is not None
        assert json.loads(p.stdout.readline())["type"] == "rollback.start"
        time.sleep(0.3)  # following now
        for t in ("health.pass", "deploy.start", "health.fail", "notify.sent", "rollback.complete"):
            j.append(t, "api", {})
        got = [json.loads(p.stdout.readline())["type"] for _ in range(2)]
        assert got == ["health.fail", "rollback.complete"]
    finally:
        stop.cancel()
        p.terminate()
        p.wait(10)
        j.close()


def test_the_event_types_are_the_documented_ones_and_every_one_the_code_writes() -> None:
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "ARCHITECTURE.md").read_text()
    section = doc[doc.index("### Events"):doc.index("### Files on disk")]
    listed = " ".join(section.split("Types:", 1)[1].split("Every event also")[0].split())
    documented = {f"{fam}.{kind}" for fam, kinds in re.findall(r"`([a-z]+)\.([a-z|-]+)`", listed)
                  for kind in kinds.split("|")}
    assert documented == set(event_types.TYPES)
    written = set()
    for path in (root / "src" / "opskit").rglob("*.py"):
        written |= set(re.findall(r"\.(?:emit|append)\(\s*\"([a-z]+\.[a-z-]+)\"", path.read_text()))
    assert written and written <= set(event_types.TYPES), written - set(event_types.TYPES)


def _drift_config(tmp_path: Path, sandbox: Sandbox) -> Path:
    (sandbox.worktree / "hotfix.txt").write_text("edited on production\n")
    conf = tmp_path / "opskit.toml"
    conf.write_text(f'[service.app]\nrepo = "{sandbox.bare}"\nworktree = "{sandbox.worktree}"\n'
                    'deploy = "true"\ndirect_push = true\n')
    return conf


@pytest.mark.parametrize("tail", [
    ["--no-notify"],
    ["--json", "--no-notify"],
    ["app", "--no-notify"],
    ["--no-notify", "app", "--json"],
    ["nosuch", "--no-notify"],
])
def test_drift_scan_fast_and_through_typer_say_the_same(tail: list[str], tmp_path: Path, sandbox: Sandbox,
                                                        monkeypatch, capsys) -> None:
    conf = _drift_config(tmp_path, sandbox)
    for head in (["--config", str(conf)], ["-c", str(conf)], [f"--config={conf}"]):
        fast, slow = _both([*head, "drift-scan", *tail], monkeypatch, capsys)
        assert fast == slow
        assert fast[0] == (2 if "nosuch" in tail else 1)
        if fast[0] == 1 and "--json" not in tail:
            assert "app: drift (3)" in fast[1] and "untracked            hotfix.txt" in fast[1]


@pytest.mark.parametrize("args", [
    ["events", "--help"], ["events", "-h"], ["--help", "events"], ["events", "-n5"],
    ["events", "--limit", "0"], ["events", "--limit", "x"], ["events", "--limit"],
    ["events", "--json=1"], ["events", "--service", "--json"], ["events", "--"],
    ["events", "extra"], ["events", "--lim", "3"], ["--config", "", "events"],
    ["drift-scan", "-x"], ["drift-scan", "--heal=yes"], ["drift-scan", "--", "app"],
    ["status"], [], ["-c"], ["--version"],
])
def test_what_the_fast_path_does_not_know_is_left_to_typer(args: list[str]) -> None:
    assert fastpath.match(args) is None


def test_a_fast_command_never_imports_typer(state_dir: Path) -> None:
    _journal(state_dir)
    code = ("import sys\nfrom opskit import cli\nrc = cli.main(['events', '--limit', '3'])\n"
            "assert rc == 0, rc\nassert 'typer' not in sys.modules, 'typer imported'\n"
            "assert 'rich' not in sys.modules, 'rich imported'\n"
            "rc = cli.main(['events', '--limit', '0'])\nassert rc == 2 and 'typer' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 3 and "note=a\\x1b[31mred" in r.stdout  # three events, escaped
