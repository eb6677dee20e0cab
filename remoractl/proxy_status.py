"""``remoractl proxy-status`` and ``remoractl proxy-config POD``: what each proxy was sent, what it
ACKed, and what one proxy holds now, read from the control plane's monitoring port.

Status per proxy: SYNCED (ACKed the last version sent), STALE (sent, no answer yet),
NOT SENT (nothing sent yet), ERROR (NACKed the last version; the reason is shown and the
proxy keeps serving its last good version). A proxy whose version or injection template differs
from what the injector (next to the control plane, or ``--injector-url``) injects now is marked
OUTDATED (restart its workload to upgrade it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from remoractl import meshapi
from remoractl.target import add_target_args, one_line, resolve


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    status = subparsers.add_parser("proxy-status", help="sync status of every connected proxy",
                                   description=__doc__)
    _common(status, injector=True)
    config = subparsers.add_parser("proxy-config", help="the configuration one proxy holds now",
                                   description=__doc__)
    config.add_argument("pod", help="POD.NAMESPACE, or POD with -n NAMESPACE")
    config.add_argument("-n", "--namespace", default=None)
    _common(config)
    config.set_defaults(run=one_line(run))
    return status


def _common(p: argparse.ArgumentParser, injector: bool = False) -> None:
    add_target_args(p, injector=injector)
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")


def _short(v: str | None) -> str:
    return v or "-"


def status_table(proxies: list[dict[str, Any]]) -> str:
    rows = [("NAME", "STATUS", "SENT", "ACKED", "PROXY", "IDENTITY", "ERROR")]
    for p in proxies:
        err = p.get("last_error") if p["status"] == "ERROR" else ""
        version = p["proxy_version"] + (" OUTDATED" if p.get("outdated") else "")
        rows.append((p["proxy_id"], p["status"], _short(p["sent_version"]), _short(p["acked_version"]),
                     version, p["identity"], err or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + ("  " + r[-1] if r[-1] else "")
        for r in rows
    )


def config_summary(body: dict[str, Any]) -> str:
    cfg = body.get("config")
    lines = [f"proxy {body['proxy_id']} ({body['identity']}): {body['status']}, "
             f"holds {_short(body['acked_version'])}, last sent {_short(body['sent_version'])}"]
    if body["status"] == "ERROR":
        lines.append(f"last error: {body['last_error']}")
    if not cfg:
        lines.append("no configuration ACKed yet")
        return "\n".join(lines)
    inbound = cfg["inbound"]
    ports = ", ".join(f"{p}={m}" for p, m in sorted(inbound["port_mtls"].items()))
    lines.append(f"inbound mTLS: {inbound['mtls_mode']}" + (f" (ports: {ports})" if ports else ""))
    lines.append("outbound:")
    for o in cfg["outbound"]:
        lines.append(f"  {','.join(o['addresses'])}:{o['port']} {o['protocol']} -> {o['service']}")
        for r in o["routes"]:
            dests = ", ".join(f"{d['cluster']} {d['weight']}" for d in r["destinations"])
            lines.append(f"    route {r['name']}: {dests}")
    lines.append("clusters:")
    for c in cfg["clusters"]:
        eps = ", ".join(f"{e['address']}:{e['port']}" + ("" if e["identity"] else " (plaintext)")
                        for e in c["endpoints"]) or "no endpoints"
        if c.get("dns"):  # resolution DNS: the proxy resolves these (its /config_dump dns_resolutions)
            eps = "resolved by the proxy: " + ", ".join(
                f"{t['hostname']}:{t['port']}" + ("" if t.get("identity") else " (plaintext)") for t in c["dns"])
        lines.append(f"  {c['name']}: {eps}")
    for note in cfg.get("unsupported") or []:
        lines.append(f"unsupported: {note}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    target = resolve(args)
    if args.command == "proxy-config":
        pid = f"{args.pod}.{args.namespace}" if args.namespace else args.pod
        code, body = target.get("/debug/config", {"proxy": pid})
        if code != 200:
            print(f"remoractl: {_error(body)}", file=sys.stderr)
            return 1
        print(json.dumps(body, indent=2) if args.output == "json" else config_summary(body))
        return 0
    code, body = target.get("/debug/proxies")
    if code != 200:
        print(f"remoractl: {target.where} answered {code}: {_error(body)}", file=sys.stderr)
        return 1
    injector = meshapi.injector_version(args, target)
    for p in body["proxies"]:
        p["outdated"], p["outdated_reason"] = meshapi.outdated(p, injector.body)
    body["injector"] = injector.body
    if args.output == "json":
        print(json.dumps(body, indent=2))
        return 0
    print(status_table(body["proxies"]))
    if injector.body is None:
        print(f"\n(OUTDATED not judged: {injector.error}; pass --injector-url)", file=sys.stderr)
    else:
        stale = [p for p in body["proxies"] if p["outdated"]]
        if stale:
            print(f"\n{len(stale)} proxy(ies) OUTDATED (the injector injects "
                  f"{injector.body['proxyVersion']}, template {injector.body['templateHash']}); "
                  "restart their workloads to upgrade them")
    for p in body["proxies"]:  # version skew: what an older proxy does not see
        if p.get("ignored_fields"):
            print(f"{p['proxy_id']} ({p['proxy_version']}) ignores snapshot fields it does not know: "
                  f"{', '.join(p['ignored_fields'])}")
        if p.get("pruned_fields"):
            print(f"{p['proxy_id']} ({p['proxy_version']}) is sent snapshots without: "
                  f"{', '.join(p['pruned_fields'])}")
    notes = sorted({n for p in body["proxies"] for n in p.get("unsupported") or []})
    if notes:
        print(f"\n{len(notes)} configuration field(s) not implemented yet (no effect):")
        print("\n".join(f"  {n}" for n in notes))
    return 0


def _error(body: Any) -> str:
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)
