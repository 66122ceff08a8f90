"""Errors, config and journal: the layer every command stands on."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from opskit.base import config
from opskit.base.errors import ConfigError, ExitCode, redact
from opskit.storage.journal import Journal


def test_exit_codes_are_the_contract() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 130]


def test_config_defaults_and_interpolation(write_config, monkeypatch) -> None:
    monkeypatch.setenv("HOOK_URL", "https://discord.com/api/webhooks/1/SECRETTOKEN")
    p = write_config(
        '[opskit]\nnotify = ["ops"]\n[notify.ops]\ntype = "discord"\nurl = "${HOOK_URL}"\n'
        '[service.web]\nrepo = "/srv/git/web.git"\nworktree = "/srv/web"\n'
        '[service.web.health]\nurl = "http://127.0.0.1:9400/health"\n'
    )
    s = config.load(p)
    web = s.service("web")
    assert web.branch == "master" and web.merge == "merge" and not web.direct_push
    assert web.health.window == 60 and web.health.period == 2 and web.health.failures == 3
    assert web.health.startup == 30 and web.health.expect_status is None
    assert s.channel("ops").url is not None
    assert "SECRETTOKEN" not in repr(s)
    assert "SECRETTOKEN" not in redact("posting to https://discord.com/api/webhooks/1/SECRETTOKEN failed")


def test_dotenv_never_overrides_real_env(write_config, monkeypatch) -> None:
    p = write_config('[notify.ops]\ntype = "webhook"\nurl = "${A_URL}"\n[opskit]\nstate_dir = "${B_DIR}"\n')
    (p.parent / ".env").write_text("A_URL=http://127.0.0.1:1/from-dotenv\nB_DIR=/tmp/from-dotenv\n")
    monkeypatch.setenv("B_DIR", "/tmp/from-env")
    monkeypatch.delenv("A_URL", raising=False)
    s = config.load(p)
    assert s.state_dir == Path("/tmp/from-env")
    assert s.channel("ops").url.reveal() == "http://127.0.0.1:1/from-dotenv"  # type: ignore[union-attr]
    # .env values serve ${VAR} only: every command opskit runs (deploy, and test/review running
    # a pushed branch's code) inherits os.environ, so the webhook URL must not be put there.
    import os

    assert "A_URL" not in os.environ


@pytest.mark.parametrize("text, key", [
    ('[service.web]\nrepo = "/r"\nworktree = "/w"\nbrnach = "main"\n', "service.web.brnach"),
    ('[service.web]\nrepo = "/r"\nworktree = "/w"\ndeploy_timeout = "5"\n', "service.web.deploy_timeout"),
    ('[service.web]\nrepo = "/r"\nworktree = "/w"\n[service.web.health]\nwindow = -1\n', "service.web.health.window"),
    ('[service.web]\nrepo = "/r"\nworktree = "/w"\n[service.web.health]\nurl = "nope"\n', "service.web.health.url"),
    ('[notify.ops]\ntype = "discord"\nurl = "${MISSING_VAR_X}"\n', "notify.ops.url"),
    ('[notify.ops]\ntype = "pager"\nurl = "http://x"\n', "notify.ops.type"),
    ('[opskit]\nnotify = ["nope"]\n', "opskit.notify"),
    ('[service.web]\nworktree = "/w"\n', "service.web.repo"),
    ('[cron]\ndrift_scan = "61 * * * *"\n', "cron.drift_scan"),
    ('[service.web\n', "invalid TOML"),
    ('[service.web]\nrepo = "/r"\nworktree = "/w"\ndeploy_timeout = nan\n', "service.web.deploy_timeout"),
    ('[service.web]\nrepo = "/r"\nworktree = "/w"\n[service.web.health]\nwindow = inf\n', "service.web.health.window"),
    ('[service.web]\nrepo = "/r"\nworktree = "~nosuchuser-opskit/x"\n', "service.web.worktree"),
    ('[opskit]\nstate_dir = "~nosuchuser-opskit/state"\n', "opskit.state_dir"),
])
def test_bad_config_names_file_and_key(write_config, text: str, key: str) -> None:
    p = write_config(text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg and "\n" not in msg
    assert e.value.exit_code == ExitCode.USAGE


def test_bad_config_exits_2_from_cli(opskit, write_config) -> None:
    p = write_config('[service.web]\nrepo = "/r"\nworktree = "/w"\nbranhc = "x"\n')
    r = opskit("--config", str(p), "events")
    assert r.returncode == 2
    assert "service.web.branhc" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_service_is_usage_error(write_config) -> None:
    s = config.load(write_config('[service.web]\nrepo = "/r"\nworktree = "/w"\n'))
    with pytest.raises(ConfigError, match="unknown service 'api'"):
        s.service("api")


def _writer(state_dir: str, n: int, who: int) -> None:
    j = Journal(Path(state_dir))
    for i in range(n):
        j.append("test.write", f"w{who}", {"i": i})


def test_journal_concurrent_writers(state_dir: Path) -> None:
    Journal(state_dir)  # schema first, as any real command would
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(state_dir), 500, w)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    events = Journal(state_dir).query(type_prefix="test.")
    assert len(events) == 4000
    assert len({e.id for e in events}) == 4000
    for w in range(8):
        assert [e.data["i"] for e in events if e.service == f"w{w}"] == list(range(500))


def test_events_json_shape(opskit, state_dir: Path) -> None:
    j = Journal(state_dir)
    j.append("rollback.complete", "primerouter", {"reverted": "4d62098a", "reason": "Connection refused"})
    j.append("health.pass", "other", {})
    r = opskit("events", "--json", "--service", "primerouter")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 1
    ev = lines[0]
    assert set(ev) >= {"id", "ts", "type", "service", "data"}
    assert ev["type"] == "rollback.complete" and ev["data"]["reason"] == "Connection refused"
    assert ev["ts"].endswith("Z")
    r = opskit("events", "--json", "--type", "health")
    assert [json.loads(x)["type"] for x in r.stdout.splitlines()] == ["health.pass"]


def test_events_since_bad_value(opskit) -> None:
    r = opskit("events", "--since", "yesterday-ish")
    assert r.returncode == 2 and "--since" in r.stderr


def test_internal_error_writes_traceback(state_dir: Path, monkeypatch, capsys) -> None:
    from opskit import cli

    def boom() -> None:
        raise RuntimeError("token https://discord.com/api/webhooks/9/ABCDEFSECRET leaked?")

    monkeypatch.setattr("opskit.storage.journal.parse_since", lambda *a, **k: boom())
    rc = cli.main(["events", "--since", "1h"])
    assert rc == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ABCDEFSECRET" not in err
    logs = list(state_dir.glob("crash-*.log"))
    assert logs and "ABCDEFSECRET" not in logs[0].read_text()


def test_internal_error_through_the_real_cli_masks_a_config_secret(tmp_path: Path, write_config, opskit,
                                                                   state_dir: Path) -> None:
    # A real `opskit` process that crashes with the webhook URL of its config in the error:
    # exit 3, one stderr line naming the crash log, the secret in neither. The fault comes from
    # a sitecustomize the child imports at start-up (its only way into a real process).
    secret = "http://127.0.0.1:9/hooks/tok-Zq8xK2mVn4Lp7RtY"
    conf = write_config(f'[opskit]\nnotify = ["ops"]\n[notify.ops]\ntype = "webhook"\nurl = "{secret}"\n')
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "import opskit.storage.journal as j\n"
        "def boom(*a, **k):\n"
        "    raise RuntimeError('could not reach ' + os.environ['LEAK_ME'] + ' today')\n"
        "j.Journal.query = boom\n")
    env = {"PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")]), "LEAK_ME": secret}
    r = opskit("--config", str(conf), "events", env=env)
    assert r.returncode == 3, r.stdout + r.stderr
    [line] = r.stderr.strip().splitlines()
    [log] = list(state_dir.glob("crash-*.log"))
    assert line == f"opskit: internal error: RuntimeError: could not reach *** today (traceback in {log})"
    text = log.read_text()
    assert "tok-Zq8xK2mVn4Lp7RtY" not in text and "RuntimeError: could not reach *** today" in text
    assert "Traceback (most recent call last)" in text and "tok-Zq8xK2mVn4Lp7RtY" not in r.stdout


def _all_commands() -> list[list[str]]:
    import typer

    from opskit import cli

    root = typer.main.get_command(cli.app)
    out: list[list[str]] = []
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        if cmd.hidden:  # internal entry points (e.g. the detached chain runner)
            continue
        out.append([name])
        for sub in getattr(cmd, "commands", {}):
            out.append([name, sub])
    return out


def test_every_command_help_has_an_example_and_a_one_line_summary(capsys) -> None:
    from opskit import cli

    commands = _all_commands()
    assert len(commands) >= 25
    for words in commands:
        assert cli.main([*words, "--help"]) == 0
        text = capsys.readouterr().out
        assert "Example" in text, f"opskit {' '.join(words)} --help has no example"
    assert cli.main(["--help"]) == 0
    listing = capsys.readouterr().out.split("Commands:")[1]
    assert "..." not in listing  # one whole line each, not a truncated docstring
    for words in commands:
        if len(words) == 1:
            assert f"  {words[0]} " in listing


def test_readme_config_example_is_valid(tmp_path, monkeypatch) -> None:
    # The README's opskit.toml is what newcomers copy: it must load as written.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("\n## Configuration\n", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = tmp_path / "opskit.toml"
    cfg.write_text(block)
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", "https://discord.com/api/webhooks/1/abcdefgh")
    s = config.load(cfg)
    svc = s.service("primerouter")
    assert svc.health.url == "http://127.0.0.1:9400/health" and svc.health.window == 60
    assert s.jobs["backup"].timezone == "Europe/Berlin"


def test_readme_fleet_example_is_valid(tmp_path, monkeypatch) -> None:
    # The fleet page's lines, with a service table to complete them, load as written.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    page = readme.split("\n## A fleet", 1)[1].split("\n## ", 1)[0]
    block = page.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = tmp_path / "opskit.toml"
    cfg.write_text(block + 'repo = "/srv/git/primerouter.git"\nworktree = "/srv/primerouter"\n')
    monkeypatch.setenv("PGPASSWORD", "s3cret-password")
    s = config.load(cfg)
    assert s.fleet is not None and s.fleet.host == "web-1"
    assert s.fleet.url.reveal() == "postgresql://opskit:s3cret-password@db.internal:5432/opskit"
    assert s.service("primerouter").hosts == ("web-1", "web-2")
    assert redact(s.fleet.url.reveal()) != s.fleet.url.reveal() and "s3cret-password" not in redact("pw s3cret-password")


@pytest.mark.parametrize("args", [
    ["notify", "--retry-for", "nan", "hi"],
    ["deploy", "web", "--lock-wait", "inf"],
    ["verify-push", "--wait", "nan", "--expect", "HEAD"],
    ["verify-push", "--timeout", "inf", "--expect", "HEAD"],
])
def test_cli_durations_must_be_finite(opskit, args: list[str]) -> None:
    r = opskit(*args)
    assert r.returncode == 2
    assert "finite number of seconds" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_sigterm_takes_the_child_process_group_down(tmp_path: Path) -> None:
    # systemd or a cron timeout sends SIGTERM: the command opskit runs must not live on
    # (a deploy command outliving its lock would run beside the next deploy).
    import os
    import signal
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "child.pid"
    p = subprocess.Popen([sys.executable, "-m", "opskit", "run-job", "t", "--", "sh", "-c",
                          f"echo $$ > {pidfile}; sleep 30"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the job's child outlived opskit")


# --- shown(): text opskit did not write, escaped for a terminal or a message --------------------

def test_shown_escapes_c0_del_c1_bidi_and_raw_bytes() -> None:
    from opskit.base.text import json_shown, shown

    hostile = "S \x1b]0;pwned\x07 C1 \x9b31m \x85 RLO \u202e LRI \u2066 RLM \u200f ALM \u061c DEL \x7f end"
    assert shown(hostile) == ("S \\x1b]0;pwned\\x07 C1 \\x9b31m \\x85 RLO \\u202e LRI \\u2066 RLM \\u200f "
                              "ALM \\u061c DEL \\x7f end")
    every = [*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
             *range(0x2066, 0x206A)]
    out = shown("".join(map(chr, every)))
    assert out.isascii() and out.isprintable() and out.count("\\") == len(every)
    # A non-UTF-8 byte from git (surrogate-escaped) is shown as that byte, never written raw.
    assert shown(b"caf\xe9 \x9b".decode("utf-8", "surrogateescape")) == "caf\\xe9 \\x9b"
    # lines=True keeps the lines of a message body or a log tail, nothing else.
    assert shown("a\x1b[2J\n\tb\r\n", lines=True) == "a\\x1b[2J\n\tb\\x0d\n"
    assert shown("a\nb") == "a\\x0ab"
    # Text people write is left alone: letters, emoji, quotes, backslashes.
    plain = "déployé ✔ 🔴 “quoted” \\x1b already-escaped"
    assert shown(plain) == plain and shown(plain, lines=True) == plain
    # JSON for a terminal: the same data back, nothing raw.
    doc = json.dumps({"s": hostile + "\udce9"}, ensure_ascii=False)
    assert json.loads(json_shown(doc)) == json.loads(doc)
    assert json_shown(doc) == ('{"s": "S \\u001b]0;pwned\\u0007 C1 \\u009b31m \\u0085 RLO \\u202e LRI \\u2066 '
                               'RLM \\u200f ALM \\u061c DEL \\u007f end\\udce9"}')
    assert json_shown('{"s": "déployé ✔"}') == '{"s": "déployé ✔"}'
