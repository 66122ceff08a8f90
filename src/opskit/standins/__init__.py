"""Stand-ins for the real world, shared by `opskit demo`, the tests and bench/:
a controllable HTTP service (service.py) and a local webhook receiver that enforces
Discord's and Slack's documented limits (receiver.py). Loopback only.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
