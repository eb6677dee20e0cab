"""Pure traffic decisions the exchange calls: no asyncio, no sockets, time and randomness injected.

flags (Envoy response flags), lb (load balancers), outlier (ejection), retry (retryOn and
back-off), fault (delay/abort), mirror (percentage, "-shadow" authority), cors (preflight and response headers), rewrite (path,
authority, redirect), headers (set/add/remove), pool (connection-pool limits).
"""
