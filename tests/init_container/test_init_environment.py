"""Environment checks that the kernel here cannot fail for real: a missing nat table, a broken
python-iptables import, capability bits. Each is simulated at the seam named in the test."""

from __future__ import annotations

import sys
import types

import pytest

from init_container import apply
from init_container.errors import InitError


class _FakeIPTCError(Exception):
    pass


def _iptc_without_nat() -> types.ModuleType:
    """A python-iptables whose tables fail the way libiptc does without iptable_nat."""
    fake = types.ModuleType("iptc")
    fake.IPTCError = _FakeIPTCError

    def _table(name: str) -> None:
        raise _FakeIPTCError(f"can't initialize {name}: b'Table does not exist (do you need "
                             "to insmod?)'")

    fake.Table = fake.Table6 = _table
    return fake


def test_nat_table_unavailable_ipv4() -> None:
    with pytest.raises(InitError) as e:
        apply.open_nat(_iptc_without_nat(), 4)
    assert str(e.value) == (
        "the IPv4 nat table is unavailable (can't initialize nat: Table does not exist (do you "
        "need to insmod?)); load the iptable_nat kernel module (modprobe iptable_nat)")


def test_nat_table_unavailable_ipv6_suggests_no_ipv6() -> None:
    with pytest.raises(InitError, match=r"IPv6 nat table is unavailable .* or run with --no-ipv6"):
        apply.open_nat(_iptc_without_nat(), 6)


def test_python_iptables_import_failure(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "iptc", None)  # makes `import iptc` raise ImportError
    with pytest.raises(InitError, match=r"cannot load the iptables libraries .*; install the "
                                        r"iptables libraries: apt-get install iptables"):
        apply.load_iptc()


@pytest.mark.parametrize("cap_eff, missing", [
    ("0000000000000000", "NET_ADMIN and NET_RAW"),
    ("0000000000002000", "NET_ADMIN"),  # bit 13 only
    ("0000000000001000", "NET_RAW"),  # bit 12 only
    ("0000000000003000", None),
    ("000001ffffffffff", None),  # root
])
def test_capability_bits(tmp_path, cap_eff: str, missing: str | None) -> None:
    status = tmp_path / "status"
    status.write_text(f"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff}\n")
    if missing is None:
        apply.check_privileges(str(status))
    else:
        with pytest.raises(InitError, match=f"missing capability {missing} "):
            apply.check_privileges(str(status))
