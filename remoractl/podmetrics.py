"""A proxy's own metrics (``:15090/stats/prometheus``) wherever its pod runs: from inside the
pod's network namespace on the local cluster, through the API server's pod proxy on Kubernetes
(as ``kubectl get --raw /api/v1/namespaces/NS/pods/POD:15090/proxy/...``). Used by
``remoractl stat``/``dashboard`` (``remoractl/meshsource.py``) and ``remoractl upgrade``.

Each answers the parsed samples, or a string saying why the pod was not scraped.
"""

from __future__ import annotations

from typing import Any

from control_plane.api.ports import METRICS_PORT
from local_cluster import meshstats, nsutil
from local_cluster.meshstats import Sample

PATH = "stats/prometheus"
TIMEOUT = 3.0

Samples = dict[Sample, float]


async def local(netns: str, ip: str) -> Samples | str:
    """A local-cluster pod's proxy, from inside its network namespace ``netns``."""
    try:
        code, body = await nsutil.http_get_in(netns, ip, METRICS_PORT, "/" + PATH, timeout=TIMEOUT)
    except (OSError, TimeoutError, ConnectionError) as e:
        return f"{type(e).__name__}: {e}"
    if code != 200:
        return f"HTTP {code}"
    return meshstats.parse(body.decode(errors="replace"))


def kube(core: Any, namespace: str, pod: str) -> Samples | str:
    """A Kubernetes pod's proxy, through the API server's pod proxy (``core``: CoreV1Api)."""
    try:
        text = core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod}:{METRICS_PORT}", namespace, PATH, _request_timeout=TIMEOUT)
    except Exception as e:  # ApiException, connection errors
        status, reason = getattr(e, "status", None), getattr(e, "reason", None)
        return f"HTTP {status} {reason}" if status else f"{type(e).__name__}: {reason or e}"
    return meshstats.parse(text if isinstance(text, str) else str(text))
