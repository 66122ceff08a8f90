"""opskit metrics: Prometheus metrics from the journal, read back with prometheus_client's own
parser after real deploys, a real auto-revert, real drift and a failed job; the textfile for
node_exporter is replaced atomically (a reader polling it never sees half)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from opskit.base import config
from opskit.base.clock import parse_iso
from opskit.git.repo import Git
from opskit.storage.journal import Journal
from opskit.views.metrics import render
from opskit.wiring import cron
from tests.support.crontab import CronUser, cron_account_fixture, cron_user_fixture  # noqa: F401 - fixtures
from tests.support.pipeline import Stage, deployed_stage_fixture, env_for  # noqa: F401 - the `st` fixture


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_metrics_after_deploys_a_revert_drift_and_a_failed_job(st: Stage, opskit, state_dir) -> None:
    env = env_for(st)
    assert st.deploy().status == "nothing"
    st.good(files={"app.txt": "v2\n"})
    assert st.deploy().status == "healthy"
    st.good(mode="crash", message="service goes crash")
    bad = st.deploy()
    assert bad.status == "reverted" and bad.revert is not None and bad.revert.ok
    (st.sb.worktree / "hotfix.txt").write_text("edited on production\n")
    (st.sb.worktree / "app.txt").write_text("v2 edited\n")
    assert opskit("drift-scan", "svc", env=env).returncode == 1
    assert opskit("run-job", "nightly", "--", "false", env=env).returncode == 1
    assert opskit("run-job", "hourly", "--", "true", env=env).returncode == 0
    assert opskit("cron-check", env=env).returncode in (0, 1)

    r = opskit("metrics", env=env)
    assert r.returncode == 0, r.stderr
    got = _samples(r.stdout)
    svc = (("service", "svc"),)
    j = Journal(state_dir)
    deploys = [e.type for e in j.query(service="svc", type_prefix="deploy.")]
    # the first deploy, v2, the crash (its deploy command ran; the gate failed) and the revert's redeploy
    assert got[("opskit_deploys_total", (("result", "complete"), *svc))] == deploys.count("deploy.complete") == 4
    assert got[("opskit_deploys_total", (("result", "fail"), *svc))] == 0
    assert got[("opskit_rollbacks_total", (("result", "complete"), *svc))] == 1
    assert got[("opskit_rollbacks_total", (("result", "fail"), *svc))] == 0
    assert _families(r.stdout)["opskit_deploys"] == "counter"
    # the last verdict is the revert's redeploy, healthy; its time is the row's
    row = next(x for x in j.deploys("svc") if x["status"] != "running")
    assert got[("opskit_last_verdict_healthy", (*svc, ("status", "healthy")))] == 1
    assert got[("opskit_last_verdict_timestamp_seconds", svc)] == parse_iso(row["finished"]).timestamp()
    commits = {labels: v for (name, labels), v in got.items() if name == "opskit_last_verdict_commit_info"}
    assert commits == {(("commit", row["sha"]), *svc): 1}  # the revert commit, live again
    assert row["sha"] == Git(st.sb.bare).rev_parse("master")
    assert got[("opskit_service_frozen", svc)] == 0
    assert got[("opskit_deploy_interrupted", svc)] == 0
    assert got[("opskit_quarantined_trees", svc)] == 1  # the crashed tree is refused from now on
    assert got[("opskit_drift_files", svc)] == 2  # hotfix.txt untracked, app.txt modified
    drifted = j.last("drift.detected", "svc")
    assert drifted is not None and got[("opskit_drift_findings", svc)] == drifted.data["count"] == 3  # + no hooks
    # jobs: the failure and the success, at the times their runs ended
    nightly, hourly = j.kv_get("job", "nightly"), j.kv_get("job", "hourly")
    assert got[("opskit_job_last_failure_timestamp_seconds", (("job", "nightly"),))] == \
        parse_iso(nightly["last_end"]).timestamp()
    assert ("opskit_job_last_success_timestamp_seconds", (("job", "nightly"),)) not in got
    assert got[("opskit_job_last_success_timestamp_seconds", (("job", "hourly"),))] == \
        parse_iso(hourly["last_end"]).timestamp()
    assert got[("opskit_job_failure_streak", (("job", "nightly"),))] == 1
    assert got[("opskit_cron_check_last_run_timestamp_seconds", ())] == \
        parse_iso(j.kv_get("cron-check", "last")["ts"]).timestamp()
    assert got[("opskit_cron_check_overdue", ())] == 0
    assert got[("opskit_heartbeat_failing", ())] == 0
    assert ("opskit_heartbeat_last_success_timestamp_seconds", ()) not in got  # no heartbeat configured
    # the notifications of the revert went out: the outbox holds them delivered, none waits
    delivered = [k for k in got if k[0] == "opskit_outbox_messages" and ("status", "delivered") in k[1]]
    assert delivered and all(got[k] >= 1 for k in delivered)
    assert not [k for k in got if k[0] == "opskit_outbox_oldest_age_seconds"]
    st_json = opskit("status", "--json", env=env)
    assert got[("opskit_attention_items", ())] == len(json.loads(st_json.stdout)["attention"])


def test_waiting_outbox_frozen_service_and_heartbeat_are_exported(write_config, sandbox, state_dir,
                                                                  monkeypatch) -> None:
    from opskit.base.clock import FakeClock, iso

    cfg = write_config('[opskit]\nheartbeat = "http://127.0.0.1:9/hc"\n'
                       f'[service.web]\nrepo = "{sandbox.bare}"\nworktree = "{sandbox.worktree}"\n'
                       '[notify.ops]\ntype = "webhook"\nurl = "http://127.0.0.1:9/x"\n')
    s = config.load_file(cfg)
    clock = FakeClock()
    j = Journal(state_dir, clock)
    from opskit.storage import outbox

    outbox.enqueue(j, clock, "ops", level="error", title="t", message="m", service="web", event_id=None)
    j.kv_set("frozen", "web", {"reason": "by hand", "since": iso(clock.now())})
    j.kv_set("heartbeat", "state", {"failing": True, "last_success": "2026-04-26T03:00:00Z"})
    clock.advance(90)
    got = _samples(render(s, j, clock))
    assert got[("opskit_outbox_messages", (("channel", "ops"), ("status", "queued")))] == 1
    assert got[("opskit_outbox_oldest_age_seconds", (("channel", "ops"),))] == 90
    assert got[("opskit_service_frozen", (("service", "web"),))] == 1
    assert got[("opskit_heartbeat_failing", ())] == 1
    assert got[("opskit_heartbeat_last_success_timestamp_seconds", ())] == \
        parse_iso("2026-04-26T03:00:00Z").timestamp()
    assert got[("opskit_attention_items", ())] == 2  # frozen, heartbeat failing


def test_the_textfile_is_never_seen_half_written(write_config, state_dir, tmp_path) -> None:
    folder = tmp_path / "textfile"
    folder.mkdir()
    target = folder / "opskit.prom"
    j = Journal(state_dir)
    for i in range(2000):  # a big file: many services' worth of lines, so a torn write would show
        j.append("deploy.complete", f"svc-{i % 400}", {})
    j.close()
    cfg = write_config(f'[opskit]\nmetrics_textfile = "{target}"\n')
    env = dict(os.environ)
    first = subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), "metrics", "--textfile",
                            str(target)], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    whole = target.read_text()
    assert whole.endswith("\n") and "opskit_journal_events 2000.0" in whole
    torn: list[str] = []
    reads = [0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                text = target.read_text()
            except FileNotFoundError:
                torn.append("missing")
                continue
            reads[0] += 1
            if not text.endswith("\n") or "opskit_journal_events" not in text:
                torn.append(text[-80:])

    t = threading.Thread(target=poll)
    t.start()
    try:
        for _ in range(5):
            r = subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), "metrics", "--textfile",
                                str(target)], check=False, env=env, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
    finally:
        stop.set()
        t.join(10)
    assert reads[0] > 5 and torn == []
    assert sorted(p.name for p in folder.iterdir()) == ["opskit.prom"]  # no temp file left behind
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_bad_textfile_paths_exit_2_and_write_nothing(opskit, tmp_path) -> None:
    r = opskit("metrics", "--textfile", str(tmp_path / "nosuch" / "opskit.prom"))
    assert r.returncode == 2 and "folder" in r.stderr and "does not exist" in r.stderr
    r = opskit("metrics", "--textfile", str(tmp_path / "opskit.txt"))
    assert r.returncode == 2 and "ending in .prom" in r.stderr
    assert not (tmp_path / "opskit.txt").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is root's: only root writes into another's folder")
def test_root_refuses_a_textfile_folder_another_account_can_change(opskit, tmp_path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    r = opskit("metrics", "--textfile", str(folder / "opskit.prom"))
    assert r.returncode == 2 and "refusing to write the metrics textfile as root" in r.stderr, r.stderr
    assert "writable by every account" in r.stderr
    assert list(folder.iterdir()) == []


def test_cron_install_adds_metrics_only_when_metrics_textfile_is_set(write_config, tmp_path) -> None:
    plain = config.load_file(write_config("[opskit]\n"))
    assert [e.name for e in cron.entries_for(plain)] == ["drift-scan", "notify-flush", "cron-check"]
    target = tmp_path / "tf" / "opskit.prom"
    s = config.load_file(write_config(f'[opskit]\nmetrics_textfile = "{target}"\n[cron]\nmetrics = "*/2 * * * *"\n'))
    [m] = [e for e in cron.entries_for(s) if e.name == "metrics"]
    assert (m.schedule, m.args) == ("*/2 * * * *", ("metrics", "--textfile", str(target)))
    block, _ = cron.render_block(s, runner=["/usr/bin/opskit"])
    assert f"metrics --textfile {target}" in block


def test_a_relative_metrics_textfile_is_exit_2(opskit, write_config) -> None:
    cfg = write_config('[opskit]\nmetrics_textfile = "opskit.prom"\n')
    r = opskit("--config", str(cfg), "metrics")
    assert r.returncode == 2 and "opskit.metrics_textfile" in r.stderr and "absolute path" in r.stderr


def test_the_installed_metrics_entry_writes_the_textfile_under_crons_environment(opskit, cron_user: CronUser,
                                                                                tmp_path, state_dir) -> None:
    folder = tmp_path / "textfile"
    folder.mkdir()
    target = folder / "opskit.prom"
    cfg = tmp_path / "conf" / "opskit.toml"
    cfg.parent.mkdir()
    cfg.write_text(f'[opskit]\nmetrics_textfile = "{target}"\n[cron]\nuser = "{cron_user.name}"\n')
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    block = cron.split_block(cron_user.read() or "").block or ""
    [line] = [ln for ln in block.splitlines() if " metrics --textfile " in ln]
    assert line.startswith("* * * * * ")
    command = re.split(r"(?<!\\)%", line.split(None, 5)[5], maxsplit=1)[0].replace("\\%", "%")
    env = {"HOME": str(tmp_path), "SHELL": "/bin/sh", "LOGNAME": "root"}  # cron's bare environment
    r = subprocess.run(["/bin/sh", "-c", command], check=False, env=env, cwd="/", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)
    got = _samples(target.read_text())
    assert got[("opskit_cron_check_overdue", ())] == 0
    assert ("opskit_journal_events", ()) in got


def test_reactions_failing_behind_and_given_up_are_exported(tmp_path, state_dir) -> None:
    """status names a failing reaction or one far behind: metrics carry the same numbers."""
    from tests.support.reactions import plain_config, react, reaction_toml

    cfg = plain_config(tmp_path, state_dir,
                       reaction_toml("broken", ["job.fail"], run="exit 7", user="root", retries=1, backoff=0),
                       reaction_toml("later", ["deploy.complete"], run="true", user="root"))
    j = Journal(state_dir)
    j.append("job.fail", None, {"job": "backup"})
    j.append("job.fail", None, {"job": "other"})
    for n in range(3):
        j.append("deploy.complete", "a", {"n": n})
    s = config.load_file(cfg)
    before = _samples(render(s, j))
    assert before[("opskit_reaction_behind_events", (("reaction", "later"),))] == 3
    assert before[("opskit_reaction_behind_events", (("reaction", "broken"),))] == 2
    assert before[("opskit_reaction_failing", (("reaction", "broken"),))] == 0
    assert react(cfg, "--quiet").returncode == 1  # broken's first run fails; later drains its 3
    got = _samples(render(s, j))
    assert got[("opskit_reaction_behind_events", (("reaction", "later"),))] == 0
    assert got[("opskit_reaction_failing", (("reaction", "broken"),))] == 1
    assert got[("opskit_reaction_gave_up_total", (("reaction", "broken"),))] == 0
    react(cfg, "--quiet")  # the retry fails too: it gives up on that event and goes on to the next
    got = _samples(render(s, j))
    assert got[("opskit_reaction_gave_up_total", (("reaction", "broken"),))] == 1
    assert got[("opskit_reaction_behind_events", (("reaction", "broken"),))] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is root's: only root writes into another's folder")
def test_root_refuses_a_textfile_folder_reached_through_a_link(opskit, tmp_path) -> None:
    """A link on the way hides the real parents: one another account owns could swap the folder."""
    foreign = tmp_path / "foreign"
    (foreign / "sub" / "inner").mkdir(parents=True)
    os.chown(foreign, 65534, 65534)
    (tmp_path / "tc").mkdir()
    (tmp_path / "tc" / "mid").symlink_to(foreign / "sub")
    r = opskit("metrics", "--textfile", str(tmp_path / "tc" / "mid" / "inner" / "x.prom"))
    assert r.returncode == 2 and "goes through a link" in r.stderr, r.stderr
    assert list((foreign / "sub" / "inner").iterdir()) == []


def test_a_textfile_folder_that_cannot_be_written_is_exit_2_in_one_line(opskit) -> None:
    r = opskit("metrics", "--textfile", "/proc/opskit.prom")
    assert r.returncode == 2 and "cannot write in /proc" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
