"""Network access that cannot hang: every download here runs under a socket timeout.

Offline machines usually fail fast (no DNS), but a firewall that drops packets makes a plain
``urlopen`` wait for minutes. Datasets and metric weights are fetched under this limit.
"""

from __future__ import annotations

import contextlib
import socket

__all__ = ["socket_timeout"]


@contextlib.contextmanager
def socket_timeout(seconds: float):
    """Default timeout for new sockets (connects and reads) within the block."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
