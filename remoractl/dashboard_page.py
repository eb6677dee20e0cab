"""The dashboard's one page: HTML, CSS and JavaScript, no external resources (works offline).

It polls ``/api/graph`` every two seconds and redraws: the service graph (an SVG, one
``g.edge`` per edge carrying ``data-source``, ``data-destination`` and ``data-rps``), the
per-workload golden metrics and the proxies' sync status.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Remora mesh</title>
<style>
 body{font-family:system-ui,sans-serif;margin:16px;color:#1d2733;background:#f7f9fb}
 h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:18px 0 6px}
 .meta{color:#5a6b7b;font-size:12px} #graph{background:#fff;border:1px solid #d8e0e8;border-radius:6px}
 table{border-collapse:collapse;background:#fff;font-size:13px} td,th{border:1px solid #d8e0e8;padding:3px 8px;text-align:right}
 th{background:#eef3f7} td:first-child,th:first-child{text-align:left}
 .node rect{fill:#e8f1fb;stroke:#2f6db3;rx:6} .node text{font-size:12px;text-anchor:middle}
 .edge line{stroke:#2f6db3;stroke-width:2} .edge.tcp line{stroke:#7a55b3;stroke-dasharray:6 3}
 .edge.bad line{stroke:#c0392b} .edge text{font-size:11px;fill:#1d2733}
 .SYNCED{color:#1e7b34} .STALE,.NOT{color:#b7791f} .ERROR{color:#c0392b}
</style></head><body>
<h1>Remora mesh</h1><div class="meta" id="meta">loading…</div>
<h2>Service graph</h2><svg id="graph" width="1100" height="420"></svg>
<h2>Workloads (inbound, as their own proxies counted)</h2><table id="workloads"></table>
<h2>Proxies (sync status with the control plane)</h2><table id="proxies"></table>
<script>
const NS = "http://www.w3.org/2000/svg";
const f1 = v => v == null ? "-" : v.toFixed(1);
const ms = v => v == null ? "-" : (v >= 10 ? v.toFixed(0) : v.toFixed(1)) + " ms";
const pct = v => v == null ? "-" : (v * 100).toFixed(1) + "%";
function el(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}
function layers(nodes, edges) {
  const depth = {}; nodes.forEach(n => depth[n] = 0);
  for (let i = 0; i < nodes.length; i++)
    edges.forEach(e => { if (e.source !== e.destination && depth[e.destination] < depth[e.source] + 1) depth[e.destination] = depth[e.source] + 1; });
  return depth;
}
function drawGraph(data) {
  const svg = document.getElementById("graph"); svg.replaceChildren();
  const defs = el("defs"); const m = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse"});
  m.appendChild(el("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: "#2f6db3"})); defs.appendChild(m); svg.appendChild(defs);
  const nodes = [...new Set(data.edges.flatMap(e => [e.source, e.destination]).concat(data.workloads.map(w => w.workload)))].sort();
  const depth = layers(nodes, data.edges);
  const cols = {}; nodes.forEach(n => (cols[depth[n]] = cols[depth[n]] || []).push(n));
  const ncol = Math.max(1, Object.keys(cols).length), W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const pos = {};
  Object.entries(cols).forEach(([d, ns]) => ns.forEach((n, i) => pos[n] = {x: 90 + d * (W - 180) / Math.max(1, ncol - 1), y: (i + 1) * H / (ns.length + 1)}));
  for (const e of data.edges) {
    const a = pos[e.source], b = pos[e.destination]; if (!a || !b) continue;
    const bad = e.success != null && e.success < 0.95;
    const g = el("g", {class: "edge " + e.protocol + (bad ? " bad" : ""), "data-source": e.source, "data-destination": e.destination, "data-rps": e.rps.toFixed(3), "data-service": e.service});
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1, ux = dx / len, uy = dy / len;
    g.appendChild(el("line", {x1: a.x + ux * 70, y1: a.y + uy * 18, x2: b.x - ux * 70, y2: b.y - uy * 18, "marker-end": "url(#arrow)"}));
    const lock = e.mtls == null ? "" : e.mtls >= 0.999 ? " · mTLS" : e.mtls > 0 ? " · mTLS " + pct(e.mtls) : " · plaintext";
    const lines = e.protocol === "tcp" ? [`${f1(e.tcp_bytes_per_s)} B/s`, `tcp${lock}`]
      : [`${f1(e.rps)} rps · ${pct(e.success)}`, `p50 ${ms(e.p50_ms)} · p99 ${ms(e.p99_ms)}${lock}`];
    lines.forEach((t, i) => g.appendChild(el("text", {x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 20 + i * 13, "text-anchor": "middle"}, t)));
    svg.appendChild(g);
  }
  for (const n of nodes) {
    const p = pos[n], g = el("g", {class: "node", "data-name": n});
    g.appendChild(el("rect", {x: p.x - 70, y: p.y - 16, width: 140, height: 32}));
    g.appendChild(el("text", {x: p.x, y: p.y + 4}, n)); svg.appendChild(g);
  }
}
function fill(id, head, rows) {
  const t = document.getElementById(id); t.replaceChildren();
  const tr = document.createElement("tr"); head.forEach(h => { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }); t.appendChild(tr);
  rows.forEach(r => { const tr = document.createElement("tr"); r.forEach(([v, cls]) => { const td = document.createElement("td"); td.textContent = v; if (cls) td.className = cls; tr.appendChild(td); }); t.appendChild(tr); });
}
async function refresh() {
  try {
    const data = await (await fetch("api/graph", {cache: "no-store"})).json();
    drawGraph(data);
    fill("workloads", ["WORKLOAD", "RPS", "SUCCESS", "P50", "P95", "P99", "TCP CONN"],
      data.workloads.map(w => [[w.workload], [f1(w.rps)], [pct(w.success)], [ms(w.p50_ms)], [ms(w.p95_ms)], [ms(w.p99_ms)], [String(Math.round(w.tcp_connections))]]));
    fill("proxies", ["PROXY", "STATUS", "SENT", "ACKED", "IDENTITY", "ERROR"],
      data.proxies.map(p => [[p.proxy_id], [p.status, p.status.split(" ")[0]], [p.sent_version || "-"], [p.acked_version || "-"], [p.identity], [p.status === "ERROR" ? (p.last_error || "") : ""]]));
    const errs = Object.keys(data.scrape_errors).length + (data.proxies_error ? 1 : 0);
    document.getElementById("meta").textContent = `${data.source} · window ${data.window_s.toFixed(1)} s · updated ${new Date().toLocaleTimeString()}` + (errs ? ` · ${errs} problem(s): ${[...Object.entries(data.scrape_errors).map(([k, v]) => k + ": " + v), data.proxies_error].filter(Boolean).join("; ")}` : "");
  } catch (e) { document.getElementById("meta").textContent = "cannot reach remoractl dashboard: " + e; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
