"""The limits' one table (sidecar/http/limits.py): mesh config → injected env → the proxy's
limits, clear errors for bad values, and the reset budget's arithmetic (no root, no sockets)."""

from __future__ import annotations

import pytest

from injector.meshconfig import MeshConfigError, from_dict
from injector.template import inject_pod
from sidecar.http import limits
from sidecar.http.events import RequestHead


def _proxy_env(mesh_limits: dict) -> dict[str, str]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
           "spec": {"containers": [{"name": "app", "image": "a:1"}]}}
    out = inject_pod(pod, from_dict({"proxyLimits": mesh_limits}))
    spec = out["spec"]
    proxy = next(c for c in spec.get("initContainers", []) + spec["containers"]
                 if c["name"] == "remora-proxy")
    return {e["name"]: e["value"] for e in proxy["env"] if "value" in e}


def test_defaults_are_envoys():
    lim = limits.Limits()
    assert (lim.max_headers_count, lim.max_head_bytes) == (100, 60 * 1024)
    assert (lim.idle_timeout, lim.upstream_idle_timeout, lim.max_requests_per_connection) == (3600, 3600, 0)
    assert (lim.premature_reset_total_stream_count, lim.premature_reset_min_stream_lifetime) == (500, 1)
    assert lim.max_outbound_control_frames == 1000


def test_mesh_config_reaches_the_proxy_as_env_and_back():
    env = _proxy_env({"maxHeadersCount": 50, "requestHeadersTimeout": 2.5, "idleTimeout": 0})
    assert env["REMORA_MAX_HEADERS_COUNT"] == "50"
    assert "REMORA_MAX_REQUEST_HEADERS_KB" not in env  # unset: the proxy's default applies
    lim = limits.from_env(env)
    assert (lim.max_headers_count, lim.request_headers_timeout, lim.idle_timeout) == (50, 2.5, 0)
    assert lim.max_request_headers_kb == 60
    assert "REMORA_MAX_HEADERS_COUNT" not in _proxy_env({})


@pytest.mark.parametrize("bad, message", [
    ({"maxHeaderCount": 5}, "unknown key(s) maxHeaderCount"),
    ({"maxHeadersCount": 0}, "proxyLimits.maxHeadersCount: invalid value 0; accepted: an integer >= 1"),
    ({"idleTimeout": "soon"}, "proxyLimits.idleTimeout: invalid value 'soon'"),
    ({"maxConcurrentStreams": True}, "accepted: an integer"),
    ({"requestHeadersTimeout": -1}, "a number of seconds >= 0"),
])
def test_bad_mesh_limits_name_the_key(bad, message):
    with pytest.raises(MeshConfigError, match=None) as e:
        from_dict({"proxyLimits": bad})
    assert message in str(e.value)


def test_bad_env_names_the_variable():
    with pytest.raises(limits.LimitsError, match="REMORA_IDLE_TIMEOUT: invalid value 'nan'"):
        limits.from_env({"REMORA_IDLE_TIMEOUT": "nan"})


def test_reset_budget_closes_on_a_burst_of_early_resets():
    budget = limits.ResetBudget(limits.Limits())
    tripped = []
    for sid in range(1, 600, 2):
        budget.open(sid)
        tripped.append(budget.close(sid, reset_by_peer=True))
    assert tripped.index(True) == 249  # the 250th premature reset: half of 500


def test_reset_budget_spares_streams_that_end_normally_or_lived_long():
    lim = limits.Limits(premature_reset_min_stream_lifetime=0.0)  # every reset is "late"
    budget = limits.ResetBudget(lim)
    for sid in range(1, 2001, 2):
        budget.open(sid)
        assert not budget.close(sid, reset_by_peer=True)
    budget = limits.ResetBudget(limits.Limits())
    for sid in range(1, 2001, 2):
        budget.open(sid)
        assert not budget.close(sid, reset_by_peer=sid % 8 == 1)  # a quarter reset early


def test_h2_request_refusals():
    lim = limits.Limits()
    head = RequestHead(1, b"GET", b"http", b"app", b"/", [(b"x-%d" % i, b"v") for i in range(101)])
    assert limits.h2_request_refusal(head, lim) == (431, "request has more than 100 headers")
    head = RequestHead(1, b"GET", b"http", b"app", b"/", [(b"x", b"v" * 61 * 1024)])
    assert limits.h2_request_refusal(head, lim)[0] == 431  # type: ignore[index]
    head = RequestHead(1, b"CONNECT", b"", b"x:443", b"", [])
    assert limits.h2_request_refusal(head, lim) == (403, "CONNECT is not supported")
    head = RequestHead(1, b"GET", b"http", b"", b"/", [(b"host", b"app")])
    assert limits.h2_request_refusal(head, lim) is None  # Host instead of :authority is fine
    head = RequestHead(1, b"GET", b"http", b"", b"/", [])
    assert limits.h2_request_refusal(head, lim) == (400, "missing :authority and host")
