# One image for every Remora entry point: remora-control, remora-injector, remora-proxy,
# remora-init and remoractl (the console scripts of pyproject.toml, on PATH).
#   docker build -t remora:$(remoractl version --client --short) .   (the version in pyproject.toml)
# The chart's image.repository/image.tag name it; docs/install.md shows how to push it.

# --- build: wheels for the project and its dependencies (python-iptables compiles a C helper;
# the native HTTP/2 codec, sidecar/native/_nghttp2.pyx, links libnghttp2)
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libnghttp2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . /src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime
FROM python:3.11-slim
# iptables brings libip4tc/libip6tc and the legacy tables that python-iptables (remora-init)
# writes; the alternatives switch makes `iptables` show the same tables when debugging.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 libnghttp2-14 \
 && update-alternatives --set iptables /usr/sbin/iptables-legacy \
 && update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# `pip install .` from the wheels built above: the project and its console scripts.
RUN pip install --no-cache-dir --no-index --find-links /wheels remora \
 && rm -rf /wheels
# uid/gid 1337: the proxy's identity, never intercepted by remora-init's rules. The control
# plane and injector run as it too; remora-init is made root by the injected pod spec.
RUN groupadd --gid 1337 remora \
 && useradd --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin remora
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 1337:1337
# No default command: each Kubernetes container names its entry point (command: [remora-...]).
CMD ["remoractl", "--help"]
