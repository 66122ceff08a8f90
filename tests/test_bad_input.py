"""Bad input (issue 6): malformed configs, wrong URLs / ports / durations, hostile names in
branches, commit messages and file names, huge command output. Each gives its documented
exit code and a one-line message, and an exit 2 changes nothing (no event, no ref moved).
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dotenv
import pytest

from opskit.base import accounts, config, statefs
from opskit.base.errors import UsageError
from opskit.git.repo import Git
from opskit.storage.journal import Journal
from tests.conftest import RunOpskit
from tests.support.accounts import throwaway_account
from tests.support.gitsandbox import Sandbox, git, make_sandbox
from tests.support.hooks import toml_str
from tests.support.pipeline import Stage, hooked_stage, seeded_stage


@dataclass
class Bench:
    sb: Sandbox
    state: Path
    good: Path  # a valid config for the sandbox
    conf_dir: Path


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """One sandbox and journal for the whole table: every case must leave them as they were."""
    root = tmp_path_factory.mktemp("badinput")
    sb = make_sandbox(root / "sb")
    state = root / "state"
    good = root / "conf" / "opskit.toml"
    good.parent.mkdir()
    good.write_text(f"[opskit]\nstate_dir = {toml_str(state)}\n"
                    '[notify.ops]\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook"\n'
                    f"[service.svc]\nrepo = {toml_str(sb.bare)}\nworktree = {toml_str(sb.worktree)}\n"
                    'branch = "master"\ndeploy = "true"\n')
    j = Journal(state)
    j.append("test.seed", "svc", {"why": "a journal that is not empty"})
    j.close()
    yield Bench(sb=sb, state=state, good=good, conf_dir=root / "bad")


# (id, lines added to the service table or appended as tables, needles the one line must hold)
BAD_CONFIGS = [
    ("unknown-key", 'colour = "red"', ["service.svc.colour", "unknown key"]),
    ("wrong-type", 'deploy_timeout = "soon"', ["service.svc.deploy_timeout", "number"]),
    ("missing-var", 'test = "${OPSKIT_REL_UNSET_VAR}"', ["service.svc.test", "OPSKIT_REL_UNSET_VAR"]),
    ("bool-as-string", 'direct_push = "yes"', ["service.svc.direct_push", "true or false"]),
    ("bad-merge", 'merge = "squash"', ["service.svc.merge"]),
    ("negative-window", "[service.svc.health]\nurl = \"http://127.0.0.1:9/\"\nwindow = -1",
     ["service.svc.health.window", "greater than 0"]),
    ("health-url-scheme", '[service.svc.health]\nurl = "ftp://x"', ["service.svc.health.url", "http"]),
    ("health-port", '[service.svc.health]\ntcp = "127.0.0.1:70000"', ["service.svc.health.tcp", "70000"]),
    ("health-regex", '[service.svc.health]\nurl = "http://127.0.0.1:9/"\nexpect_body = "(unclosed"',
     ["service.svc.health.expect_body", "regular expression"]),
    ("channel-type", '[notify.pager]\ntype = "carrier-pigeon"', ["notify.pager.type", "carrier-pigeon"]),
    ("channel-url", '[notify.pager]\ntype = "discord"\nurl = "not a url"', ["notify.pager.url"]),
    ("toml-syntax", "branch = ", ["invalid TOML"]),
]

# (id, argv after `opskit --config GOOD`, needles); all must exit 2
BAD_ARGS = [
    ("gate-url", ["health-gate", "--url", "ftp://x"], ["health url", "http"]),
    ("gate-port", ["health-gate", "--tcp", "127.0.0.1:99999"], ["port 99999"]),
    ("gate-duration", ["health-gate", "--url", "http://127.0.0.1:9/", "--window", "5x"], ["--window", "'5x'"]),
    ("gate-negative", ["health-gate", "--url", "http://127.0.0.1:9/", "--period", "-1"], ["--period"]),
    ("gate-failures", ["health-gate", "--url", "http://127.0.0.1:9/", "--failures", "x"], ["--failures"]),
    ("verify-repo", ["verify-push", "--repo", "/nonexistent/repo"], ["not a git repository"]),
    ("verify-wait", ["verify-push", "--wait", "-1"], ["--wait"]),
    ("notify-channel", ["notify", "--channel", "nope", "hi"], ["unknown notify channel 'nope'"]),
    ("notify-level", ["notify", "--channel", "ops", "--level", "loud", "hi"], ["unknown level 'loud'"]),
    ("notify-empty", ["notify", "   "], ["empty message"]),
    ("events-since", ["events", "--since", "yesterdayish"], ["--since"]),
    ("deploy-unknown", ["deploy", "nosuch"], ["unknown service 'nosuch'"]),
    ("deploy-sha", ["deploy", "svc", "--sha", "deadbeef" * 5], ["not in"]),
    ("revert-commit", ["auto-revert", "svc", "--commit", "nope$(touch pwned)"], ["--commit"]),
]


def _snapshot(b: Bench) -> tuple[int, str, str]:
    j = Journal(b.state)
    try:
        n = int(j.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        j.close()
    return n, git(b.sb.bare, "for-each-ref").stdout, Git(b.sb.worktree).head() or ""


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPSKIT_STATE_DIR"}  # the config's state_dir rules
    return subprocess.run([sys.executable, "-m", "opskit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60, check=False, errors="replace")


@pytest.mark.parametrize("case", [("config", *c) for c in BAD_CONFIGS] + [("args", *a) for a in BAD_ARGS],
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_bad_input_exits_2_with_one_line_and_changes_nothing(bench: Bench, case: tuple) -> None:  # type: ignore[type-arg]
    kind, name, what, needles = case
    before = _snapshot(bench)
    if kind == "config":
        bench.conf_dir.mkdir(exist_ok=True)
        path = bench.conf_dir / f"{name}.toml"
        text = bench.good.read_text()
        path.write_text(text + what + "\n")
        p = _cli(["--config", str(path), "deploy", "svc"], cwd=bench.conf_dir)
        needles = [path.name, *needles]  # the file is named
    else:
        p = _cli(["--config", str(bench.good), *what], cwd=bench.conf_dir.parent)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert len(lines) == 1 and lines[0].startswith("opskit: "), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in p.stderr + p.stdout
    assert _snapshot(bench) == before  # no event, no ref moved, worktree untouched
    assert not (bench.conf_dir.parent / "pwned").exists() and not (bench.conf_dir / "pwned").exists()


def test_option_parse_errors_exit_2_naming_the_option(bench: Bench) -> None:
    """Typer/click's own parse errors (a float option given letters) keep click's usage format:
    exit 2 and the last line names the option."""
    before = _snapshot(bench)
    p = _cli(["--config", str(bench.good), "verify-push", "--wait", "abc"], cwd=bench.conf_dir.parent)
    assert p.returncode == 2 and "--wait" in p.stderr.strip().splitlines()[-1], p.stderr
    assert _snapshot(bench) == before


# --- ids out of range --------------------------------------------------------------------------

BIG = "99999999999999999999"  # past SQLite's 64-bit INTEGER: sqlite3 raised OverflowError, exit 3
RANGE = "not an id; an id is a whole number from 1 to 9223372036854775807"
BAD_IDS = [
    (["incident", BIG], f"EVENT_ID '{BIG}'"),
    (["incident", "--", "-1"], "EVENT_ID '-1'"),
    (["incident", "0"], "EVENT_ID '0'"),
    (["incident", "\u00b2"], "EVENT_ID '\u00b2'"),  # isdigit() but not a number int() reads
    (["approve", BIG], f"ID '{BIG}'"),
    (["approve", "0"], "ID '0'"),
    (["approve", "--", "-3"], "ID '-3'"),
    (["reject", BIG, "--reason", "no"], f"ID '{BIG}'"),
    (["reject", "0", "--reason", "no"], "ID '0'"),
    (["notify", "--show", BIG], f"--show '{BIG}'"),
    (["notify", "--show", "-5"], "--show '-5'"),
    (["notify", "--show", "0"], "--show '0'"),
]


@pytest.mark.parametrize(("args", "named"), BAD_IDS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_ids_out_of_range_exit_2_naming_the_option_and_the_range(bench: Bench, args: list[str], named: str) -> None:
    before = _snapshot(bench)
    p = _cli(["--config", str(bench.good), *args], cwd=bench.conf_dir.parent)
    assert (p.returncode, p.stderr, p.stdout) == (2, f"opskit: {named}: {RANGE}\n", "")
    assert _snapshot(bench) == before
    assert not list(bench.state.glob("crash-*.log"))


def test_since_too_far_back_exits_2(bench: Bench) -> None:
    for since in (f"{BIG}d", "99999999w"):
        p = _cli(["--config", str(bench.good), "events", "--since", since], cwd=bench.conf_dir.parent)
        assert (p.returncode, p.stderr) == (2, f"opskit: --since '{since}': too far back; a duration reaches "
                                               "at most to the year 1, e.g. 2h, 30m, 7d, 5200w\n"), p.stderr
    assert not list(bench.state.glob("crash-*.log"))


# --- hostile names through the real pipeline --------------------------------------------------

HOSTILE = "q'uo\"te $(touch pwned) `touch pwned2` ;touch pwned3; \\x"
BAD_BYTES = b"caf\xe9-\xff\xfe"  # not UTF-8


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[Stage]:
    st = hooked_stage(tmp_path, health={"window": 0.3, "startup": 2.0},
                      extra={"feature_branches": ["feature/*"], "merge": "merge"})
    try:
        yield st
    finally:
        st.close()


def _pwned(st: Stage) -> list[Path]:
    places = [st.root, st.sb.bare, st.sb.worktree, st.sb.dev, Path(os.environ["OPSKIT_STATE_DIR"]), Path.cwd()]
    return [p / f for p in places for f in ("pwned", "pwned2", "pwned3") if (p / f).exists()]


def test_hostile_file_names_messages_and_branches_are_never_interpreted(hooked: Stage) -> None:
    st, dev = hooked, hooked.sb.dev
    # File names: quotes, $(), backticks, a newline (git allows it in a path), non-UTF-8 bytes.
    names = [HOSTILE, "new\nline $(touch pwned).txt", os.fsdecode(b"bytes-" + BAD_BYTES)]
    for n in names:
        (dev / n).write_text("x\n")
    (dev / "service.mode").write_text("healthy\n")
    git(dev, "add", "-A")
    msg = f"subject {HOSTILE}\n\nbody `touch pwned2`\n".encode() + BAD_BYTES + b"\n"
    subprocess.run(["git", "commit", "-q", "-F", "-"], cwd=dev, input=msg, check=True)
    sha = git(dev, "rev-parse", "HEAD").stdout.strip()
    p = git(dev, "push", "origin", "master", check=False)
    assert p.returncode == 0 and "svc: healthy" in p.stderr, p.stderr
    assert st.worktree_head() == sha
    for n in names:
        assert (st.sb.worktree / n).exists()
    # A hostile branch name (refnames allow $, (, `, quotes and non-UTF-8 bytes; not spaces or newlines).
    branch = os.fsdecode(b"feature/$(touch${IFS}pwned)`id`'\"" + BAD_BYTES)
    git(dev, "checkout", "-q", "-b", branch)
    (dev / "feature.txt").write_text("f\n")
    git(dev, "add", "feature.txt")
    git(dev, "commit", "-q", "-m", f"feature {HOSTILE}")
    feature = git(dev, "rev-parse", "HEAD").stdout.strip()
    fp = git(dev, "push", "origin", branch, check=False)
    assert fp.returncode == 0, fp.stderr
    # no test/review configured: the chain merges it into master and deploys the merge
    tip = git(st.sb.bare, "rev-parse", "refs/heads/master").stdout.strip()
    assert git(st.sb.bare, "rev-parse", f"{tip}^2").stdout.strip() == feature, fp.stderr
    assert st.worktree_head() == tip and st.journal().last_good("svc") == tip
    assert _pwned(st) == [], "a name was interpreted by a shell"
    # Journaled readably: valid JSON, bytes replaced, not dropped.
    out = subprocess.run([sys.executable, "-m", "opskit", "--config", str(st.config_path), "events", "--json"],
                         capture_output=True, text=True, check=True, timeout=60)
    events = [json.loads(ln) for ln in out.stdout.splitlines()]
    pushed = [e for e in events if e["type"] == "push.received"]
    assert {e["data"]["ref"] for e in pushed} >= {"refs/heads/master", "refs/heads/" + branch.encode(
        "utf-8", "surrogateescape").decode("utf-8", "replace")}
    start = [e for e in events if e["type"] == "deploy.start" and e["data"]["sha"] == sha]
    assert start and HOSTILE in start[0]["data"]["subject"]


# Escape sequences in a commit subject, a branch name and a test's output: OSC (sets the
# terminal's title), the 8-bit CSI U+009B (C1) and a right-to-left override (U+202E).
SUBJECT = "S \x1b]0;pwned\x07 C1 \x9b31m RLO \u202e end"
SUBJECT_SHOWN = "S \\x1b]0;pwned\\x07 C1 \\x9b31m RLO \\u202e end"
TEST_SAYS = "printf 'out \\033]0;pwned\\007 \\302\\23331m \\342\\200\\256 x\\n'; exit 1"
TEST_SHOWN = "out \\x1b]0;pwned\\x07 \\x9b31m \\u202e x"


def _raw(text: str) -> set[str]:
    """What a terminal or a chat client would obey: C0 but newline and tab, DEL, C1, bidi."""
    return {c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F
            or c in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"}


def test_escape_sequences_from_git_and_steps_reach_no_terminal_and_no_message(tmp_path: Path, opskit: RunOpskit) -> None:
    st = hooked_stage(tmp_path, health={"window": 0.3, "startup": 2.0},
                      extra={"feature_branches": ["feature/*"], "merge": "merge", "test": TEST_SAYS,
                             "test_failure": "human"})
    try:
        dev = st.sb.dev
        # A feature branch whose test prints escape sequences: parked for a human, announced.
        branch = "feature/x\u202eq"
        git(dev, "checkout", "-q", "-b", branch)
        (dev / "f.txt").write_text("f\n")
        git(dev, "add", "f.txt")
        git(dev, "commit", "-q", "-m", "feat " + SUBJECT)
        fp = git(dev, "push", "origin", branch, check=False)
        git(dev, "checkout", "-q", "master")
        # A deploy of a bad commit with that subject: gated, reverted, announced.
        (dev / "service.mode").write_text("crash\n")
        git(dev, "commit", "-q", "-am", "bad " + SUBJECT)
        bp = git(dev, "push", "origin", "master", check=False)
        assert bp.returncode == 0 and fp.returncode == 0, (bp.stderr, fp.stderr)
        remote = {name: "\n".join(ln for ln in p.stderr.splitlines() if ln.startswith("remote:"))
                  for name, p in (("feature", fp), ("bad", bp))}
        assert {k: _raw(v) for k, v in remote.items()} == {"feature": set(), "bad": set()}, remote
        assert f"remote:   | {TEST_SHOWN}" in remote["feature"], remote["feature"]
        assert f"bad {SUBJECT_SHOWN}" in remote["bad"] and "revert" in remote["bad"], remote["bad"]

        cfg = ["--config", str(st.config_path)]
        seen: dict[str, str] = {}
        for args in (["incident"], ["incident", "--markdown"], ["incident", "--list"], ["status"], ["pending"],
                     ["events"], ["events", "--json"], ["status", "--json"], ["notify", "--show", "1"],
                     ["notify", "--show", "2"]):
            p = opskit(*cfg, *args, cwd=st.root)
            assert p.returncode in (0, 1), (args, p.stderr)
            seen[" ".join(args)] = p.stdout + p.stderr
        assert {k: _raw(v) for k, v in seen.items()} == {k: set() for k in seen}, seen
        assert f"started: bad {SUBJECT_SHOWN}" in seen["incident"], seen["incident"]
        assert f"bad {SUBJECT_SHOWN}" in seen["incident --markdown"]
        assert "#1 svc feature/x\\u202eq" in seen["pending"] and TEST_SHOWN in seen["pending"]
        shows = seen["notify --show 1"] + seen["notify --show 2"]
        assert f"• feat {SUBJECT_SHOWN}" in shows and f"\n{TEST_SHOWN}\n" in shows, shows
        assert f" bad {SUBJECT_SHOWN}" in shows and "title: svc: approval needed (feature/x\\u202eq)" in shows
        # The messages as the channel got them: escaped, the same text `notify --show` prints.
        assert st.receiver is not None
        bodies = [str(m.body["content"]) for m in st.receiver.messages]
        assert len(bodies) == 2 and [_raw(b) for b in bodies] == [set(), set()], bodies
        assert f"• feat {SUBJECT_SHOWN}" in bodies[0] and f" bad {SUBJECT_SHOWN}" in bodies[1], bodies
    finally:
        st.close()


def test_huge_deploy_output_keeps_only_the_tail(tmp_path: Path) -> None:
    st = seeded_stage(tmp_path, health={"window": 0.3, "startup": 2.0},
                      deploy='yes "noise noise noise" | head -n 300000; echo "THE LAST LINE"; {restart}')
    try:
        st.good(files={"app.txt": "v2\n"})
        lines: list[str] = []
        r = st.deploy(lines=lines)
        assert r.ok, lines[-20:]
        ev = st.journal().last("deploy.complete", "svc")
        assert ev is not None
        assert "THE LAST LINE" in ev.data["tail"]
        size = len(json.dumps(ev.data))
        assert size < 16_000, size  # 300,000 lines in, a small event out
        print(f"\nhuge output: event data {size} bytes")
    finally:
        st.close()


def test_what_rich_prints_is_escaped_too(tmp_path: Path, opskit: RunOpskit,
                                        write_config: Callable[[str], Path]) -> None:
    """Rich passes ESC straight to the terminal: a quarantine reason (from a gate's detail, a
    commit subject) printed by `quarantine list` must come out shown, not obeyed."""
    state = tmp_path / "state"
    cfg = write_config(f'[opskit]\nstate_dir = "{state}"\n')
    j = Journal(state)
    j.quarantine_add("web", "t" * 40, "s" * 40, None, "health: \x1b]0;pwned\x07 \x9b31m \u202egnp.exe")
    j.close()
    r = opskit("--config", str(cfg), "quarantine", "list")
    assert r.returncode == 0, r.stderr
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in r.stdout, repr(r.stdout)
    assert "\\x1b]0;pwned\\x07 \\x9b31m \\u202egnp.exe" in r.stdout, r.stdout


# --- the world around the config ----------------------------------------------------------------

def test_cron_install_system_without_a_cron_d_folder_exits_2_and_makes_nothing(tmp_path: Path, opskit: RunOpskit) -> None:
    """A host without cron has no /etc/cron.d: the install crashed (exit 3, a traceback in a crash
    log) writing its temp file there."""
    bare = tmp_path / "svc.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    state = tmp_path / "state"
    conf = tmp_path / "opskit.toml"
    conf.write_text(f"[opskit]\nstate_dir = {toml_str(state)}\n[service.svc]\nrepo = {toml_str(bare)}\n"
                    f"worktree = {toml_str(tmp_path / 'srv')}\nbranch = \"master\"\ndeploy = \"true\"\n")
    target = tmp_path / "no-cron" / "opskit"
    p = opskit("--config", str(conf), "cron", "install", "--system", env={"OPSKIT_CRON_D": str(target)})
    assert (p.returncode, p.stdout) == (2, ""), p.stderr
    assert p.stderr == (f"opskit: {target.parent} does not exist, so cron reads no file there: install cron "
                        "(apt-get install cron) or set OPSKIT_CRON_D to the file your cron reads\n")
    assert not target.parent.exists() and not list(state.glob("crash-*.log"))
    assert not (state / "logs" / "cron.log").exists()  # nothing made before the refusal


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it makes an account that may not read the .env")
def test_an_env_the_account_cannot_read_is_named_only_when_the_config_needs_a_value_from_it() -> None:
    """`.env` 0600 root beside a config the account may read: it crashed the account's every
    command (PermissionError, exit 3). It matters only to a `${VAR}` the environment lacks."""
    # The test's interpreter may live where the account cannot read (a pyenv under /root): what
    # the child loads lazily is loaded here first, as an installed opskit's account could.
    codecs.lookup("utf-8-sig")
    assert dotenv.dotenv_values and statefs.denied

    root = Path(tempfile.mkdtemp(prefix="opskit-env-", dir="/var/tmp"))
    try:
        os.chmod(root, 0o755)
        env = root / ".env"
        env.write_text("OPSKIT_T_HOOK=http://127.0.0.1:9/secret-hook\n")
        env.chmod(0o600)
        plain = root / "opskit.toml"
        plain.write_text(f"[opskit]\nstate_dir = {toml_str(root / 'state')}\n")
        plain.chmod(0o644)
        with throwaway_account("opskenv") as pw:
            assert accounts.as_account(pw, lambda: str(config.load_file(plain).state_dir)) == str(root / "state")
            plain.write_text(plain.read_text() + '[notify.ops]\ntype = "webhook"\nurl = "${OPSKIT_T_HOOK}"\n')
            with pytest.raises(UsageError) as e:
                accounts.as_account(pw, config.load_file, plain)
            assert str(e.value) == (
                f"{plain}: notify.ops.url: ${{OPSKIT_T_HOOK}} is not set, and the .env that may hold it is "
                f"unreadable; .env {env}: account {pw.pw_name} cannot read it ({env} is root:root 0600: only "
                f"root can); run opskit as root (sudo opskit …), or give it to opskit's group: chgrp GROUP {env} "
                f"&& chmod g+rX {env}")
            # root reads it, and a .env that is not UTF-8 is one line too
            hook = config.load_file(plain).channels["ops"].url
            assert hook is not None and hook.reveal() == "http://127.0.0.1:9/secret-hook"
            env.write_bytes(b"OPSKIT_T_HOOK=\xff\n")
            with pytest.raises(UsageError) as e:
                config.load_file(plain)
            assert str(e.value).endswith(f"the .env that may hold it is unreadable; {env} is not UTF-8 text; "
                                         "save it as UTF-8"), str(e.value)
    finally:
        shutil.rmtree(root, ignore_errors=True)
