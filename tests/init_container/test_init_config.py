"""Flags, environment fallbacks and the shared port/CIDR parsers (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from control_plane.api import netparse
from init_container.__main__ import main
from init_container.config import Action, ConfigError, InitConfig, parse_invocation


def test_defaults_are_the_fixed_contract() -> None:
    inv = parse_invocation([], {})
    assert inv.config == InitConfig()
    assert inv.config.proxy_uid == 1337 and inv.config.inbound_port == 15006
    assert inv.config.include_inbound_ports == "*" and inv.config.include_outbound_cidrs == "*"
    assert inv.action is Action.APPLY and inv.family is None


def test_environment_fills_what_flags_leave_out_and_flags_win() -> None:
    env = {"REMORA_PROXY_UID": "2000", "REMORA_EXCLUDE_OUTBOUND_PORTS": "5432, 6379",
           "REMORA_INCLUDE_INBOUND_PORTS": "", "REMORA_IPV6": "false",
           "REMORA_INCLUDE_OUTBOUND_CIDRS": "198.19.0.0/16,fd00:19::/64"}
    c = parse_invocation(["--proxy-uid", "3000", "--verify"], env)
    assert c.action is Action.VERIFY
    assert c.config.proxy_uid == 3000
    assert c.config.exclude_outbound_ports == (5432, 6379)
    assert c.config.include_inbound_ports == ()
    assert c.config.ipv6 is False
    assert c.config.include_outbound_cidrs == (ipaddress.ip_network("198.19.0.0/16"),
                                               ipaddress.ip_network("fd00:19::/64"))
    assert parse_invocation(["--ipv6"], env).config.ipv6 is True


@pytest.mark.parametrize("argv, env, message", [
    (["--inbound-port", "0"], {}, "--inbound-port: port 0 is out of range 1-65535; give a port"),
    (["--outbound-port", "70000"], {}, "port 70000 is out of range 1-65535"),
    (["--exclude-outbound-ports", "80,abc"], {}, "port 'abc' is not a number; give a comma"),
    (["--exclude-inbound-ports", "8000-8010"], {}, "port range '8000-8010' is not supported"),
    (["--exclude-inbound-ports", "80,,81"], {}, "empty item in list '80,,81'"),
    (["--include-inbound-ports", "80,*"], {}, "'*' must stand alone"),
    ([], {"REMORA_EXCLUDE_OUTBOUND_CIDRS": "198.18.0.0/33"},
     "REMORA_EXCLUDE_OUTBOUND_CIDRS: '198.18.0.0/33' is not a CIDR"),
    (["--include-outbound-cidrs", "10.0.0/8x"], {}, "'10.0.0/8x' is not a CIDR"),
    ([], {"REMORA_IPV6": "maybe"}, "REMORA_IPV6: 'maybe' is not a boolean; use true or false"),
    (["--proxy-uid", "-1"], {}, "'-1' is not a numeric id"),
    (["--inbound-port", "15001"], {}, "inbound and outbound port are both 15001"),
    (["--include-outbound-ports", "80", "--exclude-outbound-ports", "80"], {},
     "port 80 is both included and excluded outbound"),
    (["--cleanup", "--verify"], {}, "not allowed with argument"),
    (["--nope"], {}, "unrecognized arguments: --nope; see remora-init --help"),
])
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], env: dict[str, str], message: str, capsys, monkeypatch
) -> None:
    with pytest.raises(ConfigError, match="; "):
        parse_invocation(argv, env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("remora-init: ") and err.count("\n") == 1
    assert message in err


def test_port_lists_are_trimmed_and_deduplicated() -> None:
    assert netparse.parse_ports(" 80, 8080 ,80") == (80, 8080)
    assert netparse.parse_ports("") == ()
    assert netparse.parse_port_selection(" * ") == "*"
    assert netparse.parse_port_selection("") == ()


def test_cidrs_mix_families_and_clear_host_bits() -> None:
    nets = netparse.parse_cidrs("198.18.7.1/16, fd00::1/8, 198.19.0.5")
    assert [str(n) for n in nets] == ["198.18.0.0/16", "fd00::/8", "198.19.0.5/32"]
    assert netparse.parse_cidr_selection("*") == "*"
    with pytest.raises(ValueError, match="'fd00:::1/8' is not a CIDR"):
        netparse.parse_cidr("fd00:::1/8")
