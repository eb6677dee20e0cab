"""Types shared by every Remora component: the mesh model, wire messages, ports, annotations.

Every package may import ``control_plane.api``; nothing else is imported across components.
"""
