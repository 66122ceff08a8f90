"""opskit cron install|uninstall|show against the real `crontab` binary (issue 4 item 4).

Every test works on a throwaway system user's crontab (tests/support/crontab.py); the real
user's crontab is compared before and after the session.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import zoneinfo
from pathlib import Path

import pytest

from opskit.base import config, schedule
from opskit.base.errors import UsageError
from opskit.storage.journal import Journal
from opskit.wiring import cron
from tests.support.crontab import (  # noqa: F401  (fixtures)
    CronUser,
    cron_account_fixture,
    cron_environments,
    cron_user_fixture,
)

UTC = dt.timezone.utc
# A crontab line that sets a variable for every entry after it (crontab(5)).
ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=", re.MULTILINE)
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")

FOREIGN = (
    "# my own jobs — keep them\n"
    "MAILTO=ops@example.invalid\n"
    "\n"
    "   \n"
    "*/10 * * * * /usr/bin/backup --label 'x%y' 2>&1 | logger\n"
    "@reboot /usr/local/bin/warmup\n"
    "\n\n"
)


def conf(tmp_path: Path, user: str, extra: str = "", dirname: str = "conf") -> Path:
    p = tmp_path / dirname / "opskit.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        f'[cron]\nuser = "{user}"\n'
        '[service.web]\nrepo = "/srv/git/web.git"\nworktree = "/srv/web"\n'
        '[service.api]\nrepo = "https://git.example.invalid/api.git"\nworktree = "/srv/api"\n'
        + extra
    )
    return p


def block_of(text: str) -> str:
    parts = cron.split_block(text)
    assert parts.block is not None
    return parts.block


# --- install / uninstall keep everything else byte for byte -------------------------------

def test_install_twice_leaves_one_block_and_foreign_lines_untouched(opskit, cron_user: CronUser,
                                                                     tmp_path: Path) -> None:
    cron_user.write(FOREIGN)
    cfg = conf(tmp_path, cron_user.name)
    r = opskit("--config", str(cfg), "cron", "install")
    assert r.returncode == 0, r.stderr
    first = cron_user.read()
    assert first is not None and first.startswith(FOREIGN)
    assert first.count(cron.BEGIN) == 1 and first.count(cron.END) == 1

    r = opskit("--config", str(cfg), "cron", "install", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["action"] == "unchanged"
    assert cron_user.read() == first

    r = opskit("--config", str(cfg), "cron", "uninstall")
    assert r.returncode == 0, r.stderr
    assert cron_user.read() == FOREIGN


def test_reinstall_replaces_block_in_place(opskit, cron_user: CronUser, tmp_path: Path) -> None:
    cfg = conf(tmp_path, cron_user.name)
    cron_user.write("A=1\n")
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    # Lines added below the block by hand stay below it, byte for byte.
    cron_user.write((cron_user.read() or "") + "# after\n5 4 * * * /bin/true\n")
    cfg.write_text(cfg.read_text().replace("[cron]\n", '[cron]\ndrift_scan = "17 */2 * * *"\n'))
    r = opskit("--config", str(cfg), "cron", "install", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["action"] == "updated"
    text = cron_user.read() or ""
    assert text.startswith("A=1\n" + cron.BEGIN)
    assert text.endswith(cron.END + "\n# after\n5 4 * * * /bin/true\n")
    assert text.count(cron.BEGIN) == 1
    assert "\n17 */2 * * * " in text and "\n7 * * * * " not in text
    assert opskit("--config", str(cfg), "cron", "uninstall").returncode == 0
    assert cron_user.read() == "A=1\n# after\n5 4 * * * /bin/true\n"


def test_user_line_after_the_block_keeps_its_own_environment(opskit, cron_user: CronUser,
                                                              tmp_path: Path) -> None:
    """Regression: the block used to hold PATH=… and OPSKIT_STATE_DIR=… lines, which cron applies
    to every entry after them: a job the user added below the block ran with opskit's PATH, and
    `cron uninstall` silently switched it back."""
    cron_user.write("PATH=/home/me/bin:/usr/bin:/bin\n")
    cfg = conf(tmp_path, cron_user.name)
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    cron_user.write((cron_user.read() or "") + "0 * * * * mytool\n")  # added by hand later
    text = cron_user.read() or ""
    assert not ENV_LINE.findall(block_of(text))
    mine = {"PATH": "/home/me/bin:/usr/bin:/bin"}
    assert cron_environments(text)["mytool"] == mine
    # A reinstall (with other schedules) and an uninstall do not change it either.
    cfg.write_text(cfg.read_text().replace("[cron]\n", '[cron]\ndrift_scan = "17 */2 * * *"\n'))
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    assert cron_environments(cron_user.read() or "")["mytool"] == mine
    assert opskit("--config", str(cfg), "cron", "uninstall").returncode == 0
    assert cron_user.read() == "PATH=/home/me/bin:/usr/bin:/bin\n0 * * * * mytool\n"
    assert cron_environments(cron_user.read() or "")["mytool"] == mine


OLD_BLOCK = (  # what opskit cron install wrote before the settings moved into each entry
    "# >>> opskit (managed by `opskit cron install`; edits inside are replaced) >>>\n"
    "# Schedules come from [cron] in /etc/opskit/opskit.toml; change them there and rerun `opskit cron install`.\n"
    "# Output is appended to /var/lib/opskit/logs/cron.log. `opskit cron uninstall` removes this block and nothing else.\n"
    "PATH=/opt/opskit/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    "OPSKIT_STATE_DIR=/var/lib/opskit\n"
    "7 * * * * /opt/opskit/bin/opskit --config /etc/opskit/opskit.toml run-job --ok-exit 1 drift-scan -- "
    "/opt/opskit/bin/opskit --config /etc/opskit/opskit.toml drift-scan >> /var/lib/opskit/logs/cron.log 2>&1\n"
    "# <<< opskit <<<\n"
)


def test_block_in_the_old_format_is_read_and_replaced(opskit, cron_user: CronUser, tmp_path: Path) -> None:
    before, after = "MAILTO=me@example.invalid\n", "0 * * * * mytool\n"
    cron_user.write(before + OLD_BLOCK + after)
    cfg = conf(tmp_path, cron_user.name)
    r = opskit("--config", str(cfg), "cron", "show", "--json")
    assert r.returncode == 0, r.stderr
    assert [(e["name"], e["schedule"]) for e in json.loads(r.stdout)["entries"]] == [("drift-scan", "7 * * * *")]
    r = opskit("--config", str(cfg), "cron", "install", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["action"] == "updated"
    text = cron_user.read() or ""
    assert text.startswith(before + cron.BEGIN) and text.endswith(cron.END + "\n" + after)
    assert text.count(cron.BEGIN) == 1 and "/opt/opskit" not in text
    assert not ENV_LINE.findall(block_of(text))
    assert cron_environments(text)["mytool"] == {"MAILTO": "me@example.invalid"}
    assert opskit("--config", str(cfg), "cron", "uninstall").returncode == 0
    assert cron_user.read() == before + after


def test_non_utf8_bytes_outside_the_block_are_kept(opskit, cron_user: CronUser, tmp_path: Path) -> None:
    before = b"# caf\xe9 (Latin-1)\n5 4 * * * /bin/echo \xff\xfe\n"
    after = b"# na\xefve\n"
    cron_user.write_bytes(before)
    cfg = conf(tmp_path, cron_user.name)
    r = opskit("--config", str(cfg), "cron", "install")
    assert r.returncode == 0, r.stderr
    cron_user.write_bytes(cron_user.read_bytes() + after)
    cfg.write_text(cfg.read_text().replace("[cron]\n", '[cron]\ndrift_scan = "17 */2 * * *"\n'))
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    raw = cron_user.read_bytes()
    assert raw.startswith(before + cron.BEGIN.encode()) and raw.endswith(cron.END.encode() + b"\n" + after)
    assert b"\n17 */2 * * * " in raw
    assert opskit("--config", str(cfg), "cron", "uninstall").returncode == 0
    assert cron_user.read_bytes() == before + after


def test_no_crontab_at_all_install_then_uninstall_removes_it(opskit, cron_user: CronUser,
                                                            tmp_path: Path) -> None:
    cfg = conf(tmp_path, cron_user.name)
    assert cron_user.read() is None
    r = opskit("--config", str(cfg), "cron", "uninstall", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["action"] == "absent"
    assert cron_user.read() is None
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    assert (cron_user.read() or "").startswith(cron.BEGIN)
    assert opskit("--config", str(cfg), "cron", "uninstall").returncode == 0
    assert cron_user.read() is None


def test_crontab_without_final_newline(opskit, cron_user: CronUser, tmp_path: Path) -> None:
    cron_user.write_raw("# hand edited\nX=1")
    assert cron_user.read() == "# hand edited\nX=1"
    cfg = conf(tmp_path, cron_user.name)
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    assert (cron_user.read() or "").startswith("# hand edited\nX=1\n" + cron.BEGIN)
    assert opskit("--config", str(cfg), "cron", "uninstall").returncode == 0
    # The only byte added: the final newline Debian's crontab insists on.
    assert cron_user.read() == "# hand edited\nX=1\n"


@pytest.mark.parametrize("text, problem", [
    (FOREIGN + cron.BEGIN + "\n* * * * * /bin/true\n", "begin marker without an end marker"),
    (FOREIGN + "* * * * * /bin/true\n" + cron.END + "\n", "end marker without a begin marker"),
    (cron.BEGIN + "\n" + cron.END + "\n" + cron.BEGIN + "\n" + cron.END + "\n", "repeated"),
])
def test_broken_block_exits_2_and_changes_nothing(opskit, cron_user: CronUser, tmp_path: Path,
                                                  text: str, problem: str) -> None:
    cron_user.write(text)
    cfg = conf(tmp_path, cron_user.name)
    for cmd in ("install", "uninstall", "show"):
        r = opskit("--config", str(cfg), "cron", cmd)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert problem in r.stderr and "crontab -e" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert cron_user.read() == text


def test_install_without_config_is_usage_error(opskit, tmp_path: Path) -> None:
    r = opskit("cron", "install", cwd=tmp_path)
    assert r.returncode == 2
    assert "needs a config file" in r.stderr


def test_bad_schedule_names_the_key(opskit, cron_user: CronUser, tmp_path: Path) -> None:
    cfg = conf(tmp_path, cron_user.name, dirname="c2")
    cfg.write_text(cfg.read_text().replace("[cron]\n", '[cron]\nnotify_flush = "*/5 * * *"\n'))
    r = opskit("--config", str(cfg), "cron", "install")
    assert r.returncode == 2 and "cron.notify_flush" in r.stderr
    assert cron_user.read() is None


def test_unknown_cron_user_is_usage_error(opskit, tmp_path: Path) -> None:
    cfg = conf(tmp_path, "opskit-no-such-user-x")
    r = opskit("--config", str(cfg), "cron", "install")
    assert r.returncode == 2 and "does not exist" in r.stderr


# --- what the entries say -----------------------------------------------------------------

def test_entries_are_absolute_wrapped_and_escaped(opskit, cron_user: CronUser, tmp_path: Path,
                                                  state_dir: Path) -> None:
    # A `%` in a path must survive cron's "% means newline" rule.
    cfg = conf(tmp_path, cron_user.name, dirname="conf%50 dir")
    r = opskit("--config", str(cfg), "cron", "install", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert cron_user.read() is None  # dry run
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    block = block_of(cron_user.read() or "")
    assert block in r.stdout  # the dry run showed exactly what got installed
    lines = block.splitlines()
    assert lines[0] == cron.BEGIN and lines[-1] == cron.END
    assert not ENV_LINE.findall(block)  # cron would apply it to every line after the block
    venv_bin = str(Path(os.path.abspath(sys.executable)).parent)
    jobs = [ln for ln in lines if ln and not ln.startswith("#")]
    by_name = {}
    for ln in jobs:
        words = shlex.split(ln.split(None, 5)[5].replace("\\%", "%"))
        # The settings are the command's own, inline: PATH='…' OPSKIT_STATE_DIR='…' /abs/opskit …
        env = dict(w.split("=", 1) for w in words[:2])
        assert list(env) == ["PATH", "OPSKIT_STATE_DIR"]
        assert env["PATH"].startswith(venv_bin + ":") and "/usr/bin" in env["PATH"]
        assert env["OPSKIT_STATE_DIR"] == str(state_dir)
        name_at = words.index("run-job") + 1
        assert words[name_at:name_at + 2] == ["--ok-exit", "1"]  # findings are not job failures
        name_at += 2
        # run-job opens the log itself, never the shell's `>>` (a planted link: tests/test_state_links.py)
        assert words[name_at:name_at + 2] == ["--log", str(state_dir / "logs" / "cron.log")]
        name_at += 2
        if words[name_at] == "--service":
            name_at += 2
        by_name[words[name_at]] = ln
    assert sorted(by_name) == ["cron-check", "deploy-api", "drift-scan", "notify-flush"]  # web is push mode
    assert by_name["drift-scan"].startswith("7 * * * * ")
    assert by_name["notify-flush"].startswith("*/5 * * * * ")
    assert by_name["deploy-api"].startswith("* * * * * ")
    for ln in jobs:
        assert "%" not in ln.replace("\\%", "")  # every % escaped
        words = shlex.split(ln.split(None, 5)[5].replace("\\%", "%"))[2:]
        assert words[0] == str(Path(venv_bin) / "opskit") and Path(words[0]).is_absolute()
        assert words[1:3] == ["--config", str(cfg)]
        assert not any(w.startswith(">") or w == "2>&1" for w in words)  # no shell redirection
    assert (state_dir / "logs").is_dir()


def test_an_entry_runs_under_crons_bare_environment(opskit, cron_user: CronUser, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Execute the cron-check line exactly as cron would: % rule, /bin/sh, cron's bare environment.

    The settings the entry needs (PATH, a state dir with a space and a %) travel in the line itself.
    """
    state_dir = tmp_path / "state 100%d"
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(state_dir))
    cfg = conf(tmp_path, cron_user.name, dirname="cfg%d")
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    text = cron_user.read() or ""
    lines = block_of(text).splitlines()
    assert not ENV_LINE.findall(block_of(text))
    line = next(ln for ln in lines if " cron-check --" in ln)
    assert cron_environments(text)[line.split(None, 5)[5]] == {}  # nothing from the crontab itself
    env = {"HOME": str(tmp_path), "SHELL": "/bin/sh", "LOGNAME": "root"}  # no PATH, no OPSKIT_STATE_DIR
    command = line.split(None, 5)[5]
    command = re.split(r"(?<!\\)%", command, maxsplit=1)[0].replace("\\%", "%")
    r = subprocess.run(["/bin/sh", "-c", command], check=False, env=env, cwd="/", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr, (state_dir / "logs" / "cron.log").read_text())
    log = (state_dir / "logs" / "cron.log").read_text()
    assert "cron-check" in log
    j = Journal(state_dir)
    starts = [e for e in j.query(type_prefix="job.start") if e.data["job"] == "cron-check"]
    assert len(starts) == 1
    assert j.kv_get("cron-check", "last") is not None
    assert [e.data["job"] for e in j.query(type_prefix="job.ok")] == ["cron-check"]


def test_show_lists_entries_with_next_run(opskit, cron_user: CronUser, tmp_path: Path) -> None:
    cfg = conf(tmp_path, cron_user.name)
    r = opskit("--config", str(cfg), "cron", "show", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["installed"] is False
    cron_user.write(FOREIGN)
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    r = opskit("--config", str(cfg), "cron", "show", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["installed"] and data["user"] == cron_user.name
    names = [e["name"] for e in data["entries"]]
    assert names == ["drift-scan", "notify-flush", "cron-check", "deploy-api"]
    now = dt.datetime.now(UTC)
    for e in data["entries"]:
        nxt = dt.datetime.fromisoformat(e["next_run"].replace("Z", "+00:00"))
        assert now - dt.timedelta(seconds=5) < nxt <= now + dt.timedelta(hours=1, seconds=5)
        assert nxt == dt.datetime.fromisoformat(e["next_run_local"])
    venv_bin = str(Path(os.path.abspath(sys.executable)).parent)
    for e in data["entries"]:  # the inline settings are listed apart from the command
        assert e["command"].startswith(shlex.quote(str(Path(venv_bin) / "opskit")) + " --config ")
        assert e["env"]["PATH"].startswith(venv_bin + ":") and "OPSKIT_STATE_DIR" in e["env"]
    flush = next(e for e in data["entries"] if e["name"] == "notify-flush")
    nxt = dt.datetime.fromisoformat(flush["next_run"].replace("Z", "+00:00"))
    assert nxt.minute % 5 == 0 and nxt - now <= dt.timedelta(minutes=5, seconds=5)
    r = opskit("--config", str(cfg), "cron", "show")
    assert r.returncode == 0 and "drift-scan" in r.stdout and "deploy-api" in r.stdout


# --- pure functions ----------------------------------------------------------------------

def test_split_and_join_keep_bytes() -> None:
    block = cron.BEGIN + "\nX\n" + cron.END + "\n"
    for original in ["", "A=1", "A=1\n", "\n\n# c\n\n", "x\r\ny\n"]:
        parts = cron.split_block(original)
        assert parts.block is None
        installed = cron.join_block(parts, block)
        again = cron.join_block(cron.split_block(installed), block)
        assert again == installed
        removed = cron.join_block(cron.split_block(installed), None)
        assert removed == (original if original.endswith("\n") or not original else original + "\n")


def test_parse_crontab_finds_run_job_lines_and_warns_on_unreadable_ones() -> None:
    text = (
        "# c\nPATH=/bin\n"
        "15 2 * * * /x/opskit --config '/a b/c.toml' run-job my-backup -- /usr/bin/backup\n"
        "@daily opskit run-job --ok-exit 1 --service web nightly -- true\n"
        "@reboot opskit run-job boot -- true\n"
        "61 * * * * opskit run-job bad -- true\n"
        "* * * * opskit run-job short\n"
        "0 * * * * echo 100\\% done % stdin run-job fake\n"
        "*/5 * * * * PATH='/o p\\%t/bin:/bin' OPSKIT_STATE_DIR=/var/lib/opskit '/o p\\%t/bin/opskit' --config "
        "/c.toml run-job --ok-exit 1 --log /l --service api deploy-api -- '/o p\\%t/bin/opskit' deploy api\n"
        "0 1 * * * X='a run-job b' /bin/true\n"
    )
    lines, warnings = cron.parse_crontab(text)
    jobs = {ln.job: ln for ln in lines if ln.job}
    assert set(jobs) == {"my-backup", "nightly", "boot", "deploy-api"}
    inline = jobs["deploy-api"]
    assert inline.schedule == "*/5 * * * *" and inline.service == "api"
    assert inline.env == (("PATH", "/o p%t/bin:/bin"), ("OPSKIT_STATE_DIR", "/var/lib/opskit"))
    assert inline.program.startswith("'/o p\\%t/bin/opskit' --config /c.toml run-job ")
    assert jobs["my-backup"].env == () and jobs["my-backup"].program == jobs["my-backup"].command
    assert jobs["my-backup"].schedule == "15 2 * * *"
    assert jobs["nightly"].schedule == "0 0 * * *" and jobs["nightly"].service == "web"
    assert jobs["boot"].schedule == ""
    assert len(warnings) == 2 and "line 6" in warnings[0] and "line 7" in warnings[1]


def test_render_refuses_line_breaks(write_config, tmp_path: Path) -> None:
    s = config.load(write_config('[service.a]\nrepo = "https://x.invalid/a.git"\nworktree = "/srv/a"\n'))
    with pytest.raises(UsageError, match="line break"):
        cron.render_block(s, runner=["/opt/new\nline/opskit"])


# --- schedules: DST the way Debian cron runs them -----------------------------------------

def test_daily_0230_berlin_across_the_spring_change() -> None:
    start = dt.datetime(2026, 3, 27, 12, tzinfo=UTC)
    runs = schedule.runs_between("30 2 * * *", start, start + dt.timedelta(days=4), BERLIN)
    # 28 March 02:30 CET; 29 March 02:30 does not exist → cron runs it right after the change
    # (03:00 CEST = 01:00 UTC); then 02:30 CEST again.
    assert runs == [dt.datetime(2026, 3, 28, 1, 30, tzinfo=UTC), dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
                    dt.datetime(2026, 3, 30, 0, 30, tzinfo=UTC), dt.datetime(2026, 3, 31, 0, 30, tzinfo=UTC)]
    assert schedule.prev_run("30 2 * * *", dt.datetime(2026, 3, 29, 1, 20, tzinfo=UTC), BERLIN) == runs[1]


def test_daily_0230_berlin_runs_once_in_the_autumn() -> None:
    start = dt.datetime(2026, 10, 24, 12, tzinfo=UTC)
    runs = schedule.runs_between("30 2 * * *", start, start + dt.timedelta(days=2), BERLIN)
    assert runs == [dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC), dt.datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]


def test_wildcard_jobs_follow_the_wall_clock() -> None:
    spring = schedule.runs_between("7 * * * *", dt.datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
                                   dt.datetime(2026, 3, 29, 2, 30, tzinfo=UTC), BERLIN)
    # 01:07 CET, (02:07 does not exist), 03:07 CEST, 04:07 CEST
    assert [r.strftime("%H:%M") for r in spring] == ["00:07", "01:07", "02:07"]
    autumn = schedule.runs_between("7 * * * *", dt.datetime(2026, 10, 24, 23, 30, tzinfo=UTC),
                                   dt.datetime(2026, 10, 25, 2, 30, tzinfo=UTC), BERLIN)
    # 02:07 CEST and 02:07 CET both run
    assert [r.strftime("%H:%M") for r in autumn] == ["00:07", "01:07", "02:07"]
    assert schedule.prev_run("*/5 * * * *", dt.datetime(2026, 10, 25, 1, 12, tzinfo=UTC), BERLIN) == \
        dt.datetime(2026, 10, 25, 1, 10, tzinfo=UTC)


def test_period_and_grace() -> None:
    at = dt.datetime(2026, 5, 1, 10, 2, tzinfo=UTC)
    assert schedule.period("*/5 * * * *", at, UTC) == 300
    assert schedule.default_grace(300) == 60
    assert schedule.default_grace(86400) == 8640
    assert schedule.validate_cron("*/5 * * *") == "expected 5 fields, got 4"
    assert schedule.validate_cron("0 25 * * *")
