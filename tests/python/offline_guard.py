"""Keeps a client script on this machine: connections and name lookups that would leave
127.0.0.1 are refused, and proxy variables are dropped. Shared by seed_pay.py and
x402_v2_pay.py; the SDKs they drive are not modified.
"""

import ipaddress
import os
import socket
from typing import Any


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def install_offline_guard() -> None:
    """Refuse connections and name lookups that would leave this machine."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(address: Any) -> None:
        if isinstance(address, tuple) and address and isinstance(address[0], str):
            if not _is_loopback(address[0]):
                raise ConnectionRefusedError(f"offline guard: refused connection to {address[0]}")

    def connect(self, address):  # type: ignore[no-untyped-def]
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):  # type: ignore[no-untyped-def]
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and not _is_loopback(str(h)):
            raise socket.gaierror(socket.EAI_NONAME, f"offline guard: refused lookup of {h}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    # requests (used by web3 for the token info read) honours *_PROXY env vars.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"
