"""The deploy command's output goes to a file under the state dir (logs/deploy-NAME.log), not
a pipe of ours (deploy/rollout.py open_deploy_log, base/proc.py run's `output`): a server the
deploy script starts in the background without a redirect keeps answering after opskit exits."""

from __future__ import annotations

import os
import shlex
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.standins.service import kill_pid
from opskit.wiring import hooks
from tests.support.pipeline import Stage, make_stage

# Logs every request to stderr (http.server's default), as hand-written apps do.
SERVER = textwrap.dedent('''\
    import http.server, os, sys
    open(sys.argv[2], "w").write(str(os.getpid()))
    print("serving on", sys.argv[1], file=sys.stderr, flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    ''')


@pytest.fixture
def naive(tmp_path: Path) -> Iterator[tuple[Stage, Path]]:
    srv = tmp_path / "server.py"
    srv.write_text(SERVER)
    pidfile = tmp_path / "server.pid"
    # The naive restart script: kill the old one, start the new one in the background, no redirect.
    script = tmp_path / "restart.sh"
    st = make_stage(tmp_path / "t", deploy=f"sh {shlex.quote(str(script))}",
                    health={"startup": 3.0, "window": 0.6}, receiver=False)
    script.write_text(textwrap.dedent(f"""\
        [ -f {pidfile} ] && kill "$(cat {pidfile})" 2>/dev/null && sleep 0.3
        echo "restart marker $OPSKIT_SHA"
        python3 {shlex.quote(str(srv))} {st.port} {pidfile} &
        """))
    j = st.journal()
    j.deploy_finish(j.deploy_start(st.service, st.sb.tip(), previous=None, chain="seed"), "healthy")
    hooks.install(st.settings, st.settings.service(st.service))
    try:
        yield st, pidfile
    finally:
        if pidfile.exists() and pidfile.read_text().strip():
            kill_pid(int(pidfile.read_text().strip()))
        st.close()


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=3) as r:
        return r.read().decode()


def test_a_backgrounded_server_without_a_redirect_still_answers_after_opskit_exits(naive: tuple[Stage, Path]) -> None:
    st, pidfile = naive
    st.sb.commit({"app.txt": "v2\n"}, "a good change")
    t0 = time.monotonic()
    push = st.sb.push(st.sb.branch, check=False)
    assert push.returncode == 0, push.stderr
    assert time.monotonic() - t0 < 30  # the push returned: nothing waited on the server's output
    assert "✔ healthy" in push.stderr, push.stderr
    types = [e.type for e in st.journal().query(service=st.service)]
    assert "health.pass" in types and "rollback.start" not in types, types
    complete = next(e for e in st.journal().query(service=st.service) if e.type == "deploy.complete")
    assert "restart marker" in complete.data["tail"], complete.data
    # opskit (the hook and its worker) is gone; the server writes each request to its stderr,
    # and still answers 10 s later.
    for _ in range(10):
        assert _get(st.port) == "ok"
        time.sleep(1.0)
    assert _get(st.port) == "ok"
    log = Path(os.environ["OPSKIT_STATE_DIR"]) / "logs" / f"deploy-{st.service}.log"
    text = log.read_text()
    assert "restart marker" in text and text.count("GET /hello") >= 10, text


def test_the_deploy_log_holds_one_deploy_and_is_not_a_link(naive: tuple[Stage, Path]) -> None:
    st, _pidfile = naive
    sha1 = st.good(files={"app.txt": "v2\n"}, message="first")  # deployed by the hooks
    log = Path(os.environ["OPSKIT_STATE_DIR"]) / "logs" / f"deploy-{st.service}.log"
    assert f"restart marker {sha1}" in log.read_text()
    sha2 = st.good(files={"app.txt": "v3\n"}, message="second")
    assert st.worktree_head() == sha2
    text = log.read_text()
    # Truncated at each deploy: the first deploy's lines are gone, the second's are there.
    assert text.startswith(f"restart marker {sha2}"), text
    assert log.stat().st_nlink == 1 and not log.is_symlink()
