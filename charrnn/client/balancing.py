"""How a client reaches replicas: the targets it accepts, the balancing policy and keepalive.

Light on purpose (no grpc): the CLI declares these settings as flags before grpc loads. `open_channel`
(charrnn.client.channel) turns them into channel options.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from charrnn.settings import SettingError, setting

LB_POLICIES = ("round_robin", "pick_first")
# Target schemes gRPC resolves itself; a target with one of them is passed through unchanged.
SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


@dataclass(frozen=True)
class Balancing:
    """How a channel spreads calls over the addresses its target resolves to, and notices a dead one.

    round_robin is the default because a target with several replicas should spread a client's streams
    over all of them: pick_first sends every call of a channel over one connection to one replica.
    """

    lb_policy: str = setting(
        "round_robin",
        "round_robin: each call goes to the next healthy address of the target (a stream stays on its "
        "replica); pick_first: every call over one connection",
    )
    keepalive_ms: int = setting(30000, "ping a connection that carries calls after this long without traffic (0 = off)")
    keepalive_timeout_ms: int = setting(
        10000, "an unanswered ping closes the connection after this long: its calls fail with UNAVAILABLE"
    )

    def __post_init__(self) -> None:
        if self.lb_policy not in LB_POLICIES:
            raise SettingError(f"--lb-policy must be one of {', '.join(LB_POLICIES)}, got {self.lb_policy!r}")
        if self.keepalive_ms < 0:
            raise SettingError(f"--keepalive-ms must be 0 (off) or more, got {self.keepalive_ms}")
        if self.keepalive_timeout_ms < 1:
            raise SettingError(f"--keepalive-timeout-ms must be 1 or more, got {self.keepalive_timeout_ms}")


def grpc_target(target: str, *, tls: bool = False) -> str:
    """The gRPC target for `target`: a comma-separated list of IP:PORT becomes gRPC's static address list
    (`ipv4:a:p,b:p` or `ipv6:[a]:p,...`); anything else (HOST:PORT, `dns:///NAME:PORT`, a target with a
    scheme) is gRPC's already. SettingError for a list gRPC cannot take, or cannot check certificates for
    under `tls` (TLS verifies the target's name, and a list has none)."""
    resolved = _grpc_target(target)
    if tls and resolved.startswith(("ipv4:", "ipv6:")) and "," in resolved:
        raise SettingError(
            f"target {target!r}: TLS checks the server's name, which a list of addresses does not give; "
            f"name the replicas with dns:///NAME:PORT (a name their certificate holds)"
        )
    return resolved


def _grpc_target(target: str) -> str:
    target = target.strip()
    if not target:
        raise SettingError("the target is empty: give HOST:PORT, a list IP:PORT,IP:PORT or dns:///NAME:PORT")
    if "," in target and target.startswith("dns:"):
        raise SettingError(f"target {target!r}: dns: takes one name (it resolves to every replica), not a list")
    if "," not in target or target.startswith(SCHEMES):
        return target
    items = [item.strip() for item in target.split(",")]
    families = {_ip_version(target, item) for item in items}
    if len(families) > 1:
        raise SettingError(f"target {target!r} mixes IPv4 and IPv6 addresses: list one family")
    return f"ipv{families.pop()}:{','.join(items)}"


def _ip_version(target: str, item: str) -> int:
    """4 or 6 for an `IP:PORT` (`[IPv6]:PORT`) item of a list; SettingError naming the item otherwise."""
    host, sep, port = item.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError
        version = ipaddress.ip_address(host[1:-1] if bracketed else host).version
        if bracketed != (version == 6):  # gRPC writes IPv6 in brackets, IPv4 without
            raise ValueError
        return version
    except ValueError:
        raise SettingError(
            f"target {target!r}: {item!r} is not IP:PORT ([IPv6]:PORT); a list takes IP addresses, and a name "
            f"that resolves to several replicas goes alone as dns:///NAME:PORT"
        ) from None
