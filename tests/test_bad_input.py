"""Bad input (issue 6): malformed configs, wrong URLs / ports / durations, hostile names in
branches, commit messages and file names, huge command output. Each gives its documented
exit code and a one-line message, and an exit 2 changes nothing (no event, no ref moved).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opskit.git.repo import Git
from opskit.storage.journal import Journal
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
