"""The HTTP data plane: sans-IO codecs (``h1``, ``h2codec``), their events (``events``), and
the protocol-agnostic pieces every codec shares (``headers``, ``replies``, ``exchange``).
See docs/proxy.md ("HTTP structure")."""
