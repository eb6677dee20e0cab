"""Configuration sources: where the control plane reads Kubernetes-style objects from.

Both sources implement ``Source``: they keep the current objects and call ``on_change`` after
each change; the registry is rebuilt from ``objects()``.
"""

from control_plane.sources.base import Source

__all__ = ["Source"]
