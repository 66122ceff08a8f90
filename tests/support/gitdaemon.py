"""A real `git daemon` on 127.0.0.1 (git:// with push enabled) and a remote that never answers.

Other helpers run tests at the same time, so ports come from the OS and a failed bind is
retried on a new port.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opskit.standins import free_port


@dataclass
class GitDaemon:
    base: Path
    port: int

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@contextlib.contextmanager
def git_daemon(base: Path) -> Iterator[GitDaemon]:
    """Serve every repo under base as git://127.0.0.1:PORT/<path relative to base>."""
    last_err = ""
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}",
             "--export-all", "--enable=receive-pack", "--informative-errors",
             f"--base-path={base}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None and not _accepts(port):
            time.sleep(0.02)
        if proc.poll() is None and _accepts(port):
            try:
                yield GitDaemon(base=base, port=port)
            finally:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                if proc.stderr:
                    proc.stderr.close()
            return
        proc.kill()
        _, err = proc.communicate(timeout=5)
        last_err = err.decode(errors="replace")
    raise RuntimeError(f"git daemon did not start: {last_err}")


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung remote)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            held.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()
