"""Fixed ports, uids and addresses shared by every component (see docs/ and DESIGN.md)."""

from __future__ import annotations

PROXY_UID = 1337
PROXY_GID = 1337

OUTBOUND_PORT = 15001  # app -> proxy (iptables OUTPUT redirect)
INBOUND_PORT = 15006  # peer -> proxy (iptables PREROUTING redirect)
ADMIN_PORT = 15000  # 127.0.0.1 only: config dump, counters, log level, drain
AGENT_PORT = 15020  # app-health probes, /quitquitquit
HEALTH_PORT = 15021  # /healthz/ready
METRICS_PORT = 15090  # Prometheus text format
DISCOVERY_PORT = 15012  # control plane: discovery stream and CA (mTLS)
WEBHOOK_PORT = 9443  # injector's mutating webhook
DNS_PORT = 15053  # the proxy's DNS server (UDP and TCP); the pod's port-53 traffic goes here
MONITORING_PORT = 15014  # control plane and injector: /metrics and debug endpoints (HTTP)

# Ports of the proxy itself: never redirected inbound.
PROXY_OWN_PORTS = (OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT, AGENT_PORT, HEALTH_PORT, METRICS_PORT)

# The proxy's own hop to the app leaves from this source so it is not captured again.
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"

DEFAULT_TRUST_DOMAIN = "cluster.local"
CA_TOKEN_AUDIENCE = "remora-ca"

# The ConfigMap the control plane keeps in every namespace with the mesh's trust roots (Istio's
# istio-ca-root-cert); injected pods mount it.
TRUST_CONFIGMAP = "remora-ca-root-cert"
TRUST_KEY = "root-cert.pem"
