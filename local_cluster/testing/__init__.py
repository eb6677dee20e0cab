"""Helpers for tests, benchmarks and the demo, kept out of the local cluster's runtime.

``meshpair``: two meshed pods from a static bootstrap (no control plane). ``sample``: the sample
app (examples/) on a running local cluster: apply it, wait for it, measure it.
"""
