"""Listening addresses: refuse one the server cannot take with a one-line error naming it and the flag.

gRPC's own bind failure is a RuntimeError that names neither the cause nor the flag (and its core logs a
line of its own), so the server tries the address with a plain socket first, as gRPC would bind it.
"""

from __future__ import annotations

import errno
import socket

from service.config import ConfigError

# Ports that -1 turns off (the gRPC port cannot be).
OPTIONAL_PORT_FLAGS = ("--metrics-port", "--http-port")
# What to do about the usual causes, by errno; anything else gets the system's words only.
_ADVICE = {
    errno.EADDRINUSE: "another process is listening there; stop it or choose another {flag} ({free})",
    errno.EACCES: "ports below 1024 need privileges; choose another {flag} ({free})",
    errno.EADDRNOTAVAIL: "the address is not one of this host's; choose another {host_flag}",
}


def bind_error(what: str, host: str, port: int, flags: tuple[str, str], exc: OSError) -> ConfigError:
    """The error for `what` (e.g. "gRPC") failing to bind host:port; `flags` are its (port, host) flags."""
    flag, host_flag = flags
    free = "0 = any free port" + (", -1 = off" if flag in OPTIONAL_PORT_FLAGS else "")
    reason = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno or 0, "check {flag} and {host_flag}").format(
        flag=flag, host_flag=host_flag, free=free
    )
    if isinstance(exc, socket.gaierror):
        advice = f"{host!r} does not resolve; choose another {host_flag}"
    return ConfigError(f"cannot listen for {what} on {host}:{port}: {reason.lower()}; {advice}")


def check_bindable(what: str, host: str, port: int, flags: tuple[str, str]) -> None:
    """Bind every address `host` resolves to on `port` and let go; ConfigError naming the flag if one fails.

    SO_REUSEADDR as gRPC sets it, so a port held only by connections in TIME_WAIT counts as free.
    Port 0 (any free port) cannot be taken and is not tried.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
    except OSError as exc:
        raise bind_error(what, host, port, flags, exc) from exc
