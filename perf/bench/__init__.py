"""Remora's benchmark harness: scenarios on pod namespaces, load generators, measurements."""
