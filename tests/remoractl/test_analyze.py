"""``remoractl analyze``: each message code against a broken setup, the good setup clean, and
the CLI's exit codes and output forms."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from remoractl import analyzers
from remoractl.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
GOOD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {remora.dev/inject: enabled}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  template:
    metadata: {labels: {app: reviews, version: v1}, annotations: {remora.dev/drain-seconds: "10"}}
    spec: {serviceAccountName: reviews, containers: [{name: app, image: app}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: remora-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]
"""


def objects(extra: str = "") -> list[dict]:
    return [d for d in yaml.safe_load_all(GOOD + extra) if d]


def codes(extra: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for m in analyzers.analyze(objects(extra)):
        if m.code != "RMR0001" or "AuthorizationPolicy is not implemented" not in m.text:
            found.setdefault(m.code, []).append(f"({m.resource}) {m.text}")
    return found


def test_good_setup_is_clean() -> None:
    assert codes("") == {}
    # A wildcard DestinationRule host names no one service: not a missing reference.
    assert codes("---\nkind: DestinationRule\nmetadata: {name: all, namespace: shop}\n"
                 "spec: {host: '*.shop.svc.cluster.local'}\n") == {}


@pytest.mark.parametrize(("code", "extra", "expected"), [
    ("IST0101", """
---
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec: {hosts: [ratings], http: [{route: [{destination: {host: ratings}}]}]}
""", "(VirtualService shop/ratings) Referenced host not found: 'ratings.shop.svc.cluster.local'"),
    ("IST0101", """
---
kind: VirtualService
metadata: {name: split, namespace: shop}
spec: {hosts: [reviews.shop.svc.cluster.local], http: [{route: [{destination: {host: reviews, subset: v9}}]}]}
""", "+'v9'"),
    ("IST0101", """
---
kind: DestinationRule
metadata: {name: gone, namespace: shop}
spec: {host: gone}
""", "(DestinationRule shop/gone) Referenced host not found: 'gone.shop.svc.cluster.local'"),
    ("IST0101", """
---
kind: AuthorizationPolicy
metadata: {name: ap, namespace: shop}
spec: {rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/ghost]}}]}]}
""", "Referenced service account not found: shop/ghost"),
    ("IST0106", """
---
kind: VirtualService
metadata: {name: bad, namespace: shop}
spec: {hosts: [reviews2], http: [{route: [{destination: {host: reviews}, weight: -1}]}]}
""", "(VirtualService shop/bad) invalid, ignored: spec.http[0].route[0].weight"),
    ("IST0108", """
---
kind: Pod
metadata: {name: p, namespace: shop, annotations: {remora.dev/drain-second: "3"}}
spec: {containers: [{name: a, image: a}]}
""", "(Pod shop/p) Unknown annotation: remora.dev/drain-second"),
    ("IST0109", """
---
kind: VirtualService
metadata: {name: reviews-2, namespace: shop}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
""", "define the same host (reviews.shop.svc.cluster.local)"),
    ("IST0125", """
---
kind: Pod
metadata: {name: p, namespace: shop, annotations: {remora.dev/proxy-cpu: lots}}
spec: {containers: [{name: a, image: a}]}
""", "(Pod shop/p) Invalid annotation remora.dev/proxy-cpu"),
    ("IST0125", """
---
kind: Namespace
metadata: {name: other, labels: {remora.dev/inject: "true"}}
""", "(Namespace other) Invalid label remora.dev/inject='true'"),
    ("IST0127", """
---
kind: PeerAuthentication
metadata: {name: pa, namespace: shop}
spec: {selector: {matchLabels: {app: ratings}}, mtls: {mode: STRICT}}
""", "No matching workloads for this resource with the following labels: app=ratings"),
    ("IST0131", """
---
kind: VirtualService
metadata: {name: shadow, namespace: shop}
spec:
  hosts: [reviews.shop]
  http:
  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {exact: /api/x}, method: {exact: GET}}]
    route: [{destination: {host: reviews, subset: v1}}]
""", "(VirtualService shop/shadow) spec.http[1].match[0] is shadowed by an earlier route"),
    ("RMR0001", """
---
kind: DestinationRule
metadata: {name: tp, namespace: shop}
spec: {host: reviews.shop.svc.cluster.local, trafficPolicy: {tls: {mode: SIMPLE}}}
""", "spec.trafficPolicy.tls.mode SIMPLE is not implemented yet"),
    ("RMR0003", """
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec: {selector: {istio: ingressgateway}}
""", "(Gateway shop/gw) Remora does not implement Gateway (networking.istio.io)"),
    ("IST0102", """
---
kind: Namespace
metadata: {name: legacy}
---
kind: Pod
metadata: {name: p, namespace: legacy}
spec: {containers: [{name: a, image: a}]}
""", "(Namespace legacy) The namespace is not enabled for Remora injection"),
    ("RMR0002", """
---
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
""", "applies to namespace istio-system only, which has no workloads"),
])
def test_each_code_on_a_broken_setup(code: str, extra: str, expected: str) -> None:
    found = codes(extra)
    assert code in found, found
    assert any(expected in text for text in found[code]), found[code]


def test_match_coverage() -> None:
    from control_plane.api.model import RouteMatch as M
    from control_plane.api.model import StringMatch as S
    assert analyzers._covers(M(uri=S(prefix="/a")), M(uri=S(exact="/a/b"), method=S(exact="GET")))
    assert not analyzers._covers(M(uri=S(prefix="/a"), method=S(exact="POST")),
                                 M(uri=S(exact="/a/b"), method=S(exact="GET")))
    assert not analyzers._covers(M(headers={"x": S(exact="1")}), M(uri=S(prefix="/")))
    assert analyzers._covers(M(headers={"x": S(exact="1")}),
                             M(headers={"x": S(exact="1"), "y": S(exact="2")}))
    assert analyzers._covers(None, M(uri=S(exact="/")))
    # A regex is never judged to cover anything: unsure means not shadowed.
    assert not analyzers._covers(M(uri=S(regex="/a.*")), M(uri=S(exact="/a/b")))
    assert not analyzers._covers(M(port=8080), M())


def remoractl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(list(argv))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.run(args)
    return code, out.getvalue(), err.getvalue()


def test_examples_are_clean() -> None:
    code, out, _ = remoractl("analyze", "-f", str(REPO / "examples"))
    assert code == 0 and out.startswith("\u2714 No validation issues found"), out


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "---\nkind: DestinationRule\nmetadata: {name: gone, namespace: shop}\nspec: {host: gone}\n")
    code, out, _ = remoractl("analyze", "-f", str(bad))
    assert code == 79
    assert "Error [IST0101] (DestinationRule shop/gone) Referenced host not found" in out
    code, out, _ = remoractl("analyze", "-f", str(bad), "-o", "json")
    errors = [m for m in json.loads(out) if m["level"] == "Error"]
    assert errors[0]["code"] == "IST0101" and errors[0]["name"] == "ReferencedResourceNotFound"
    # Warnings alone pass, unless the threshold is lowered.
    warn = tmp_path / "warn.yaml"
    warn.write_text(GOOD + "---\nkind: Pod\nmetadata: {name: p, namespace: shop, annotations: "
                    "{remora.dev/typo: x}}\nspec: {containers: [{name: a, image: a}]}\n")
    assert remoractl("analyze", "-f", str(warn))[0] == 0
    assert remoractl("analyze", "-f", str(warn), "--failure-threshold", "Warning")[0] == 79
    code, _, err = remoractl("analyze", "-f", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml: no such file or directory" in err
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    code, _, err = remoractl("analyze", "-f", str(tmp_path / "broken.yaml"))
    assert code == 2 and "broken.yaml" in err
    code, _, err = remoractl("analyze", "--local-dir", str(tmp_path / "nothing"))
    assert code == 2 and "no local cluster at" in err
