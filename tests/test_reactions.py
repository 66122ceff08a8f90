"""Reactions: the user's next step after an event — real pushes, real processes, real events.

Delivery is at least once, in order, with no daemon: the process that journals a matching
event starts `opskit react`, cron runs it every minute, a cursor per reaction moves only after
a run succeeded. Gates (`deploy.pre`) run inside the pipeline and can stop a deploy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.base import config
from opskit.storage.journal import Journal
from tests.support.notify import outbox_rows
from tests.support.pipeline import Stage, hooked_stage, toml_value
from tests.support.reactions import (
    add_reactions,
    cursor,
    events,
    idle,
    lines,
    plain_config,
    react,
    react_proc,
    reaction_toml,
    wait_idle,
    wait_until,
)


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[Stage]:
    st = hooked_stage(tmp_path)
    try:
        yield st
    finally:
        wait_idle(Path(os.environ["OPSKIT_STATE_DIR"]))
        st.close()


def recorder(out: Path) -> str:
    """A reaction command that writes one line per run and keeps each event's stdin."""
    return (f'echo "$OPSKIT_EVENT_ID $OPSKIT_EVENT_TYPE $OPSKIT_SERVICE $OPSKIT_COMMIT" >> {out}; '
            f'cat > {out}.stdin-$OPSKIT_EVENT_ID')


# --- through the installed hooks --------------------------------------------------------------

def test_rollback_runs_migrate_down_once_with_the_event_on_stdin(hooked: Stage, state_dir: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "migrate-down.log"
    add_reactions(hooked.config_path, reaction_toml("migrate-down", ["rollback.complete"], service="svc",
                                                    run=recorder(out), user="root", timeout=30))
    hooked.good("crash", message="a bad deploy")  # health fails → auto-revert → rollback.complete
    wait_until(lambda: len(lines(out)) >= 1, 30, "migrate-down to run")
    wait_idle(state_dir)
    rb = events(state_dir, "rollback.complete")
    assert len(rb) == 1
    eid = rb[0]["id"]
    assert lines(out) == [f"{eid} rollback.complete svc {rb[0].get('commit', '')}"]
    got = json.loads((tmp_path / f"migrate-down.log.stdin-{eid}").read_text())
    assert (got["id"], got["type"], got["service"]) == (eid, "rollback.complete", "svc")
    ok = events(state_dir, "reaction.ok")
    assert [(e["data"]["reaction"], e["data"]["event_id"]) for e in ok] == [("migrate-down", eid)]
    assert cursor(state_dir, "migrate-down")["event_id"] >= eid  # type: ignore[index]
    # A later run of cron's react does not run it again.
    assert react(hooked.config_path, "--quiet").returncode == 0
    assert len(lines(out)) == 1


def test_deploy_runs_a_smoke_test_and_posts_the_event_with_no_secret_printed(hooked: Stage, state_dir: Path,
                                                                            tmp_path: Path) -> None:
    assert hooked.receiver is not None
    secret_url = hooked.receiver.url("webhook", "status-tok-Kq93ZzWv")
    (hooked.config_path.parent / ".env").write_text(f"STATUS_WEBHOOK={secret_url}\n")
    out = tmp_path / "smoke.log"
    add_reactions(hooked.config_path,
                  reaction_toml("smoke", ["deploy.complete"], run=recorder(out) + "; echo smoke passed",
                                user="root"),
                  reaction_toml("status-page", ["deploy."], url="${STATUS_WEBHOOK}", timeout=5))
    sha = hooked.good("healthy", files={"app.txt": "v2\n"})
    wait_until(lambda: len(lines(out)) >= 1, 30, "the smoke test")
    wait_until(lambda: len([m for m in hooked.receiver.messages if m.kind == "webhook"]) >= 2, 15, "two POSTs")
    wait_idle(state_dir)
    done = events(state_dir, "deploy.complete")[-1]
    assert lines(out) == [f"{done['id']} deploy.complete svc {sha}"]
    posted = [m for m in hooked.receiver.messages if m.kind == "webhook"]
    assert [m.body["type"] for m in posted] == ["deploy.start", "deploy.complete"]
    assert posted[1].body["id"] == done["id"] and posted[1].body["commit"] == sha
    assert posted[1].headers.get("X-Opskit-Event-Id") == str(done["id"])
    shown = subprocess.run([sys.executable, "-m", "opskit", "--config", str(hooked.config_path), "reactions",
                            "--json"], capture_output=True, text=True, check=True).stdout
    journal_text = json.dumps([e.to_dict() for e in Journal(state_dir).query()])
    log = (state_dir / "logs" / "react.log").read_text() if (state_dir / "logs" / "react.log").exists() else ""
    for text in (shown, journal_text, log):
        assert "status-tok-Kq93ZzWv" not in text
    rows = {json.loads(ln)["name"]: json.loads(ln) for ln in shown.splitlines()}
    assert rows["smoke"]["last"]["result"] == "ok" and rows["status-page"]["last"]["result"] == "ok"
    assert rows["smoke"]["behind"] == 0 and rows["status-page"]["behind"] == 0


def test_a_deploy_pre_gate_that_exits_1_stops_the_deploy_and_leaves_the_old_commit_live(
        hooked: Stage, state_dir: Path) -> None:
    add_reactions(hooked.config_path, reaction_toml(
        "reversible", ["deploy.pre"], gate=True, user="root", timeout=10,
        run='echo "migration 0042 of $OPSKIT_COMMIT cannot be reversed"; exit 1'))
    live = hooked.worktree_head()
    sha = hooked.good("healthy", files={"app.txt": "v2\n"})
    assert hooked.worktree_head() == live
    fail = events(state_dir, "deploy.fail")
    assert len(fail) == 1 and fail[0]["data"]["step"] == "gate" and fail[0]["data"]["reaction"] == "reversible"
    assert f"migration 0042 of {sha} cannot be reversed" in fail[0]["data"]["tail"]
    assert events(state_dir, "deploy.start") == []
    assert [d["status"] for d in Journal(state_dir).deploys("svc")][:1] == ["healthy"]  # the seed, still live


def test_the_pipeline_never_waits_for_a_non_gate_reaction_and_a_hang_is_bounded(hooked: Stage, state_dir: Path,
                                                                              tmp_path: Path) -> None:
    began, ended = tmp_path / "began", tmp_path / "ended"
    add_reactions(hooked.config_path, reaction_toml(
        "slow", ["deploy.complete"], user="root", timeout=3, retries=0,
        run=f"touch {began}; sleep 30; touch {ended}"))
    hooked.good("healthy", files={"app.txt": "v2\n"})  # returns once the deploy's verdict is in
    assert events(state_dir, "health.pass")
    assert not ended.exists()
    wait_until(began.exists, 15, "the reaction to start")
    wait_idle(state_dir, timeout=30)
    gave = events(state_dir, "reaction.gave-up")
    assert len(gave) == 1 and gave[0]["data"]["timed_out"] is True
    assert not ended.exists()  # the whole group was stopped at its timeout


# --- the dispatcher over real events ----------------------------------------------------------

def test_events_of_two_services_are_filtered(tmp_path: Path, state_dir: Path) -> None:
    out_a, out_all = tmp_path / "a.log", tmp_path / "all.log"
    cfg = plain_config(tmp_path, state_dir,
                       reaction_toml("only-a", ["deploy.complete"], service="a", run=recorder(out_a), user="root"),
                       reaction_toml("every", ["deploy.complete"], run=recorder(out_all), user="root"))
    j = Journal(state_dir)
    ids = [j.append("deploy.complete", s, {}).id for s in ("a", "b", "a", "b")]
    j.append("health.pass", "a", {})
    assert react(cfg).returncode == 0
    assert [ln.split()[:3] for ln in lines(out_a)] == [[str(ids[0]), "deploy.complete", "a"],
                                                       [str(ids[2]), "deploy.complete", "a"]]
    assert [ln.split()[2] for ln in lines(out_all)] == ["a", "b", "a", "b"]


def test_a_reaction_failing_twice_then_succeeding_runs_three_times_and_the_cursor_moves_once(
        tmp_path: Path, state_dir: Path) -> None:
    count = tmp_path / "count"
    run = f'echo x >> {count}; [ "$(wc -l < {count})" -ge 3 ]'
    cfg = plain_config(tmp_path, state_dir, reaction_toml("flaky", ["rollback.complete"], run=run, user="root",
                                                          retries=5, backoff=0))
    j = Journal(state_dir)
    start = cursor(state_dir, "flaky")
    eid = j.append("rollback.complete", "a", {}).id
    seen = []
    for _ in range(4):
        r = react(cfg, "--quiet")
        seen.append((r.returncode, cursor(state_dir, "flaky")["event_id"]))  # type: ignore[index]
    assert start is None
    # Held before the event through both failures; past it (and its own later events) once it passed.
    last = Journal(state_dir).last_event_id()
    assert seen == [(1, eid - 1), (1, eid - 1), (0, last), (0, last)]
    assert len(lines(count)) == 3
    assert [e["data"]["attempt"] for e in events(state_dir, "reaction.fail")] == [1, 2]
    assert [e["data"]["attempt"] for e in events(state_dir, "reaction.ok")] == [3]


def test_a_reaction_that_always_fails_gives_up_after_retries_notified_once(tmp_path: Path, state_dir: Path) -> None:
    from opskit.standins.receiver import Receiver

    rcv = Receiver.start()
    try:
        channel = ('[notify.ops]\ntype = "discord"\n'
                   f"url = {toml_value(rcv.url('discord'))}\nretry_for = 1\ntimeout = 2\n")
        cfg = plain_config(tmp_path, state_dir, reaction_toml("broken", ["job.fail"], run="echo nope >&2; exit 7",
                                                               user="root", retries=2, backoff=0),
                           opskit_keys='notify = ["ops"]\n', extra=channel)
        eid = Journal(state_dir).append("job.fail", None, {"job": "backup"}).id
        after = Journal(state_dir).append("job.fail", None, {"job": "other"}).id
        codes = [react(cfg, "--quiet").returncode for _ in range(5)]
        gave = events(state_dir, "reaction.gave-up")
        assert [(g["data"]["event_id"], g["data"]["attempts"], g["data"]["exit"]) for g in gave] == \
            [(eid, 3, 7), (after, 3, 7)]
        assert codes == [1, 1, 1, 1, 1]  # 3 runs of the first (the 3rd gives up and moves on), then the second
        rows = [r for r in outbox_rows(state_dir) if "gave up" in (r["title"] or "")]
        assert len(rows) == 2 and {r["event_id"] for r in rows} == {g["id"] for g in gave}
        assert "nope" in rows[0]["message"]
        assert react(cfg, "--quiet").returncode == 0
        assert len([r for r in outbox_rows(state_dir) if "gave up" in (r["title"] or "")]) == 2
    finally:
        rcv.stop()


def test_react_killed_during_a_run_repeats_that_event_and_skips_nothing(tmp_path: Path, state_dir: Path) -> None:
    out, marker = tmp_path / "runs", tmp_path / "slow-once"
    run = (f'echo "start $OPSKIT_EVENT_ID" >> {out}; if [ ! -e {marker} ]; then touch {marker}; sleep 2; fi; '
           f'echo "end $OPSKIT_EVENT_ID" >> {out}')
    cfg = plain_config(tmp_path, state_dir, reaction_toml("step", ["deploy.complete"], run=run, user="root"))
    j = Journal(state_dir)
    ids = [j.append("deploy.complete", "a", {"n": n}).id for n in range(3)]
    p = react_proc(cfg)
    wait_until(lambda: f"start {ids[0]}" in lines(out), 20, "the first run")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    # The command holds the dispatcher's lock until it ends: no second copy beside it.
    assert react(cfg, "--json").stdout.strip().startswith('{"busy": true')
    wait_until(lambda: idle(state_dir), 20, "the orphaned run to end")
    assert react(cfg, "--quiet").returncode == 0
    starts = [ln.split()[1] for ln in lines(out) if ln.startswith("start")]
    assert starts == [str(ids[0]), str(ids[0]), str(ids[1]), str(ids[2])]
    assert cursor(state_dir, "step")["event_id"] == Journal(state_dir).last_event_id()  # type: ignore[index]


def test_two_react_at_once_run_each_event_once_per_reaction(tmp_path: Path, state_dir: Path) -> None:
    out1, out2 = tmp_path / "one", tmp_path / "two"
    cfg = plain_config(tmp_path, state_dir, reaction_toml("one", ["deploy."], run=recorder(out1), user="root"),
                       reaction_toml("two", ["deploy.complete"], run=recorder(out2), user="root"))
    j = Journal(state_dir)
    ids = [j.append("deploy.complete", "a", {"n": n}).id for n in range(30)]
    procs = [react_proc(cfg) for _ in range(2)]
    for p in procs:
        p.wait(60)
    assert [ln.split()[0] for ln in lines(out1)] == [str(i) for i in ids]
    assert [ln.split()[0] for ln in lines(out2)] == [str(i) for i in ids]


@pytest.mark.slow
def test_a_burst_of_200_events_reaches_every_reaction_in_order(tmp_path: Path, state_dir: Path) -> None:
    out1, out2 = tmp_path / "one", tmp_path / "two"
    cfg = plain_config(tmp_path, state_dir,
                       reaction_toml("one", ["deploy.complete"], run=f'echo "$OPSKIT_EVENT_ID" >> {out1}', user="root"),
                       reaction_toml("two", ["deploy."], service="b", run=f'echo "$OPSKIT_EVENT_ID" >> {out2}',
                                     user="root"))
    # Journaled by a process that loaded the config, as a hook does: its appends start the dispatcher.
    script = ("import sys\nfrom opskit.base import config\nfrom opskit.storage.journal import Journal\n"
              "s = config.load(sys.argv[1]); j = Journal(s.state_dir)\n"
              "print(' '.join(str(j.append('deploy.complete', 'b', {'n': n}).id) for n in range(200)))\n")
    ids = subprocess.run([sys.executable, "-c", script, str(cfg)], capture_output=True, text=True,
                         check=True).stdout.split()
    wait_until(lambda: len(lines(out1)) >= 200 and len(lines(out2)) >= 200, 120, "200 runs of each")
    wait_idle(state_dir)
    assert lines(out1) == ids and lines(out2) == ids


def test_replay_runs_a_reaction_again_from_an_event(tmp_path: Path, state_dir: Path) -> None:
    out = tmp_path / "out"
    cfg = plain_config(tmp_path, state_dir, reaction_toml("step", ["deploy.complete"], run=recorder(out), user="root"))
    j = Journal(state_dir)
    ids = [j.append("deploy.complete", "a", {}).id for _ in range(3)]
    assert react(cfg, "--quiet").returncode == 0
    r = react(cfg, "--replay", "step", "--from", str(ids[1]))
    assert r.returncode == 0, r.stderr
    assert [ln.split()[0] for ln in lines(out)] == [str(i) for i in ids + ids[1:]]
    bad = react(cfg, "--replay", "nosuch", "--from", "1")
    assert bad.returncode == 2 and "no reaction 'nosuch' (configured: step)" in bad.stderr


def test_a_reactions_own_events_reach_only_reactions_naming_them_never_itself(tmp_path: Path,
                                                                              state_dir: Path) -> None:
    watch = tmp_path / "watch"
    cfg = plain_config(tmp_path, state_dir,
                       reaction_toml("failing", ["deploy.complete", "reaction.fail"], run="exit 1", user="root",
                                     retries=0, backoff=0),
                       reaction_toml("fine", ["deploy.complete"], run="exit 0", user="root"),
                       reaction_toml("watcher", ["reaction.gave-up"], run=recorder(watch), user="root"),
                       reaction_toml("oks", ["reaction.ok"], run="exit 0", user="root"))
    Journal(state_dir).append("deploy.complete", "a", {})
    react(cfg, "--quiet")
    gave = events(state_dir, "reaction.gave-up")
    assert [g["data"]["reaction"] for g in gave] == ["failing"]  # its own reaction.fail never reached it
    assert [ln.split()[:2] for ln in lines(watch)] == [[str(gave[0]["id"]), "reaction.gave-up"]]
    # fine's reaction.ok reached "oks", which names it; a run for a reaction's event (watcher's,
    # oks' own) starts nothing more, so no two reactions can feed each other.
    oks = [(e["data"]["reaction"], e["data"]["event_type"]) for e in events(state_dir, "reaction.ok")]
    assert sorted(oks) == [("fine", "deploy.complete"), ("oks", "reaction.ok"), ("watcher", "reaction.gave-up")]
    assert [e["data"]["event_id"] for e in events(state_dir, "reaction.ok") if e["data"]["reaction"] == "oks"] == \
        [next(e["id"] for e in events(state_dir, "reaction.ok") if e["data"]["reaction"] == "fine")]


def test_root_runs_a_services_reaction_as_its_account_and_never_as_root_unasked(state_dir: Path) -> None:
    from tests.support.accounts import throwaway_account

    if os.geteuid() != 0:
        pytest.skip("needs root: root's dispatcher drops to the service's account")
    # Not under pytest's 0700 tmp dir: the account must reach the worktree it runs in.
    base = Path(tempfile.mkdtemp(prefix="opskit-react-root-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    with throwaway_account("okr") as pw, contextlib.ExitStack() as done:
        done.callback(shutil.rmtree, base, True)
        cfg = plain_config(base, state_dir,
                           reaction_toml("as-svc", ["deploy.complete"], service="a", run="id -u; pwd"),
                           reaction_toml("no-user", ["job.fail"], run="id -u", retries=0))
        cfg.write_text(cfg.read_text().replace("[service.a]\n", f'[service.a]\nuser = "{pw.pw_name}"\n'))
        # Whatever umask the test process was left with: the account must enter the worktree.
        subprocess.run(["chmod", "-R", "go+rX", str(base)], check=True)
        worktree = config.load(cfg).service("a").worktree
        j = Journal(state_dir)
        j.append("deploy.complete", "a", {})
        j.append("job.fail", None, {"job": "x"})
        react(cfg, "--quiet")
        # config.load above armed this process's trigger: the appends may have started a detached
        # dispatcher that holds the lock while react() returns "busy". Wait for whichever runs.
        wait_idle(state_dir)
        ok = events(state_dir, "reaction.ok")
        assert [(e["data"]["reaction"], e["data"]["account"]) for e in ok] == [("as-svc", pw.pw_name)], \
            events(state_dir, "reaction.")
        assert ok[0]["data"]["tail"].splitlines() == [str(pw.pw_uid), str(worktree)]
        gave = events(state_dir, "reaction.gave-up")
        assert [g["data"]["reaction"] for g in gave] == ["no-user"]
        assert "would run as root" in gave[0]["data"]["reason"]


# --- config, listing, status ------------------------------------------------------------------

@pytest.mark.parametrize(("table", "message"), [
    (reaction_toml("x", ["rollback.finished"], run="true"), "reaction.x.on: unknown event type 'rollback.finished'"),
    (reaction_toml("x", ["deploy.complete"], run="true") + reaction_toml("x", ["job.ok"], run="true"),
     "reaction.x.name: 'x' is used by another [[reaction]]"),
    (reaction_toml("x", ["deploy.pre"], run="true"), "deploy.pre is the gate before a deploy; add gate = true"),
    (reaction_toml("x", ["reaction."], run="true"), "reach only reactions naming them exactly"),
    (reaction_toml("x", ["deploy."]), "needs exactly one of run or url"),
    (reaction_toml("x", ["deploy."], run="true", service="nope"), "names service 'nope', which is not configured"),
])
def test_a_bad_reaction_table_is_exit_2_naming_the_fix(tmp_path: Path, state_dir: Path, table: str,
                                                      message: str) -> None:
    cfg = plain_config(tmp_path, state_dir, table, services=("a",))
    r = subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), "reactions"], check=False,
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    if "unknown event type" in message:
        assert "rollback.start|complete|fail" in r.stderr and "reaction.ok|fail|gave-up" in r.stderr


def test_reactions_and_status_show_where_each_one_stands(tmp_path: Path, state_dir: Path) -> None:
    cfg = plain_config(tmp_path, state_dir,
                       reaction_toml("stuck", ["deploy.complete"], run="exit 3", user="root", backoff=600),
                       reaction_toml("late", ["health.pass"], service="b", run="true", user="root"))
    j = Journal(state_dir)
    first = j.append("deploy.complete", "a", {}).id
    for _ in range(101):
        j.append("health.pass", "b", {})
    listing = subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), "reactions", "--json"],
                             capture_output=True, text=True, check=True).stdout
    rows = {json.loads(ln)["name"]: json.loads(ln) for ln in listing.splitlines()}
    assert (rows["late"]["cursor"], rows["late"]["behind"]) == (None, 101)
    # Only "stuck" runs: as another dispatcher would leave "late" behind, it is tried once here.
    settings = config.load(cfg)
    from opskit.reactions.dispatch import dispatch

    dispatch(settings, Journal(state_dir), only="stuck")
    status = subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), "status"],
                            check=False, capture_output=True, text=True)
    assert f"reaction stuck is failing on event #{first}" in status.stdout
    assert "reaction late is 101 events behind" in status.stdout
    rows = {json.loads(ln)["name"]: json.loads(ln) for ln in subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(cfg), "reactions", "--json"],
        capture_output=True, text=True, check=True).stdout.splitlines()}
    assert rows["stuck"]["cursor"] == first - 1 and rows["stuck"]["attempts"] == 1
    assert rows["stuck"]["last"]["result"] == "fail" and rows["stuck"]["last"]["exit"] == 3
    # doctor names the same two, one warning each, and says where to look
    doctor = subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), "doctor", "--json"],
                            check=False, capture_output=True, text=True)
    found = {c["name"]: c for c in json.loads(doctor.stdout)["checks"] if c["name"].startswith("reaction")}
    assert set(found) == {"reaction stuck", "reaction late"}, found
    assert found["reaction stuck"]["detail"].startswith(f"reaction stuck is failing on event #{first} (1 failed run(s)")
    assert found["reaction late"]["detail"] == "reaction late is 101 events behind (is cron's `opskit react` installed?)"
    assert {(c["ok"], c["severity"]) for c in found.values()} == {(False, "warning")}


def test_cron_install_adds_react_every_minute(tmp_path: Path, state_dir: Path) -> None:
    from opskit.wiring import cron

    cfg = plain_config(tmp_path, state_dir, reaction_toml("x", ["deploy."], run="true", user="root"))
    entries = {e.name: e for e in cron.entries_for(config.load(cfg))}
    assert entries["react"].schedule == "* * * * *" and entries["react"].args == ("react", "--quiet")
    gate_only = plain_config(tmp_path / "g", state_dir, reaction_toml("g", ["deploy.pre"], gate=True, run="true"))
    assert "react" not in {e.name for e in cron.entries_for(config.load(gate_only))}


def test_a_failed_run_waits_out_its_backoff_doubling_each_time(tmp_path: Path, state_dir: Path) -> None:
    from opskit.base.clock import FakeClock
    from opskit.reactions.dispatch import dispatch

    count = tmp_path / "count"
    cfg = plain_config(tmp_path, state_dir, reaction_toml("flaky", ["job.fail"], run=f"echo x >> {count}; exit 1",
                                                          user="root", retries=9, backoff=10))
    settings, j = config.load(cfg), Journal(state_dir)
    j.append("job.fail", None, {"job": "backup"})
    clock = FakeClock(j.clock.now())
    runs = []
    for step in (0, 9, 1, 19, 1, 39, 1):  # seconds the clock moves before each dispatch
        clock.advance(step)
        dispatch(settings, j, clock=clock)
        runs.append(len(lines(count)))
    assert runs == [1, 1, 2, 2, 3, 3, 4]
    assert [e["data"]["retry_in"] for e in events(state_dir, "reaction.fail")] == [10, 20, 40, 80]


def test_a_trigger_that_cannot_start_is_journaled_and_never_fails_the_emitting_step(tmp_path: Path,
                                                                                     state_dir: Path) -> None:
    cfg = plain_config(tmp_path, state_dir, reaction_toml("x", ["deploy.complete"], run="true", user="root"))
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    (state_dir / "logs" / "react.log").symlink_to(target)  # planted: the trigger must not write through it
    settings = config.load(cfg)  # this process now journals as a hook would
    ev = Journal(settings.state_dir).append("deploy.complete", "a", {})
    assert ev.id > 0
    fails = events(state_dir, "reaction.fail")
    assert [(f["data"]["stage"], f["data"]["event_id"]) for f in fails] == [("trigger", ev.id)]
    assert "could not start `opskit react`" in fails[0]["data"]["reason"]
    assert target.read_text() == "untouched\n"
    assert idle(state_dir)
