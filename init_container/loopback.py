"""Put ::6/128 on lo: the inbound proxy reaches an IPv6 app from ::6, as it uses 127.0.0.6 for
IPv4. The whole of 127.0.0.0/8 is local already; ::6 is not, so without this address the app's
answers to ::6 would be routed out of the pod and the inbound hop would hang."""

from __future__ import annotations

import shutil
import subprocess

from .errors import InitError

PASSTHROUGH6 = "::6/128"


def ensure_passthrough_address() -> None:
    """Idempotent (``ip addr replace``)."""
    ip = shutil.which("ip")
    if ip is None:
        raise InitError("the 'ip' command is missing (needed to put ::6 on lo for IPv6)",
                        "install iproute2, or run with --no-ipv6")
    proc = subprocess.run([ip, "-6", "addr", "replace", PASSTHROUGH6, "dev", "lo"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise InitError(f"cannot add {PASSTHROUGH6} to lo: {proc.stderr.strip()}",
                        "enable IPv6 in the pod (net.ipv6.conf.all.disable_ipv6=0) or run with --no-ipv6")
