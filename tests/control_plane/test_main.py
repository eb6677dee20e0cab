"""remora-control flags: bad combinations fail with one line that says what to do."""

from __future__ import annotations

import datetime as dt

import pytest

from control_plane.__main__ import parse_args, parse_ttl


@pytest.mark.parametrize(("argv", "message"), [
    (["--dir", "m", "--token-key", "k"], "exactly one of --ca-dir DIR or --ca-secret"),
    (["--dir", "m", "--ca-dir", "c"], "needs --token-key FILE"),
    (["--ca-dir", "c", "--token-key", "k"], "--source files needs --dir DIR"),
    (["--dir", "m", "--token-key", "k", "--ca-secret", "ns/n"], "--ca-secret needs --source kube"),
    (["--dir", "m", "--token-key", "k", "--ca-dir", "c", "--cert-ttl", "soon"], "not a duration"),
])
def test_bad_flags(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_durations() -> None:
    assert parse_ttl("20s") == dt.timedelta(seconds=20)
    assert parse_ttl("24h") == dt.timedelta(hours=24)
    a = parse_args(["--source", "kube", "--ca-secret", "remora-system/remora-ca"])
    assert (a.port, a.monitoring_port, a.debounce_quiet, a.debounce_max) == (15012, 15014, 0.1, 10.0)
