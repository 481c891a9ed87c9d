"""The resolved model: example topologies, automatic addresses, routes, immutability."""

from __future__ import annotations

import dataclasses
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Any

import pytest

import harness
from harness.errors import TopologyError
from harness.topology import (
    BACKEND_NAMES,
    Host,
    Interface,
    Network,
    Route,
    Service,
    Topology,
    load_topology,
    parse_topology,
)

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = ROOT / "topologies"
GOOD = ROOT / "tests" / "data" / "good"


def good(name: str) -> Topology:
    return load_topology(GOOD / f"{name}.yaml")


def test_public_names_are_exported() -> None:
    from harness import topology

    assert set(topology.__all__) >= {
        "load_topology",
        "parse_topology",
        "topology_schema",
        "Topology",
        "Network",
        "Host",
        "Interface",
        "Route",
        "Service",
        "BACKEND_NAMES",
    }
    assert harness.load_topology is load_topology
    assert BACKEND_NAMES[0] == "netns"
    assert "docker" in BACKEND_NAMES
    assert "ssh" in BACKEND_NAMES


def test_lan_topology() -> None:
    topo = load_topology(TOPOLOGIES / "lan.yaml")
    assert topo.name == "lan"
    assert topo.source == str(TOPOLOGIES / "lan.yaml")
    assert list(topo.networks) == ["lan"]
    assert topo.networks["lan"] == Network(
        "lan", IPv4Network("10.0.1.0/24"), IPv6Network("fd00:1::/64")
    )
    assert list(topo.hosts) == ["h1", "h2", "h3"]
    h2 = topo.hosts["h2"].interface("lan")
    assert h2.address == IPv4Interface("10.0.1.12/24")
    assert h2.address6 == IPv6Interface("fd00:1::12/64")
    assert h2.ifname == "lan"
    assert topo.hosts["h1"].interface("lan").address == IPv4Interface("10.0.1.11/24")
    assert topo.hosts["h3"].interface("lan").address == IPv4Interface("10.0.1.13/24")
    for host in topo.hosts.values():
        assert host.routes == ()
        assert host.forwarding is False
        assert host.backend == "netns"
        assert dict(host.sysctls) == {}
        assert host.services == ()


def test_routed_topology() -> None:
    topo = load_topology(TOPOLOGIES / "routed.yaml")
    assert list(topo.networks) == ["lan", "wan"]
    assert all(n.subnet and n.subnet6 for n in topo.networks.values())
    r1 = topo.hosts["r1"]
    assert r1.forwarding is True
    assert [i.network for i in r1.interfaces] == ["lan", "wan"]
    h1, h2 = topo.hosts["h1"], topo.hosts["h2"]
    assert h1.routes == (
        Route(IPv4Network("0.0.0.0/0"), IPv4Address("10.0.1.1")),
        Route(IPv6Network("::/0"), IPv6Address("fd00:1::1")),
    )
    assert h2.routes == (
        Route(IPv4Network("0.0.0.0/0"), IPv4Address("10.0.2.1")),
        Route(IPv6Network("::/0"), IPv6Address("fd00:2::1")),
    )
    # every gateway is r1's address on the network the host is on
    for host in (h1, h2):
        (interface,) = host.interfaces
        router = r1.interface(interface.network)
        assert router.address is not None
        assert router.address6 is not None
        assert [r.via for r in host.routes] == [router.address.ip, router.address6.ip]


def test_star100_topology_gets_automatic_addresses_in_file_order() -> None:
    topo = load_topology(TOPOLOGIES / "star100.yaml")
    assert list(topo.hosts) == [f"h{i:03d}" for i in range(1, 101)]
    addresses = [h.interface("lan").address for h in topo.hosts.values()]
    assert addresses == [IPv4Interface(f"10.0.0.{i}/16") for i in range(1, 101)]
    assert all(h.interface("lan").address6 is None for h in topo.hosts.values())


def test_automatic_addresses_skip_static_ones_and_fill_each_family() -> None:
    topo = good("dual_stack_auto")
    a, r1, b, c = (topo.hosts[n] for n in ("a", "r1", "b", "c"))
    # lan: statics 10.0.1.1 (r1) and fd00:1::1, fd00:1::2 (r1, b) are reserved first
    assert a.interface("lan").address == IPv4Interface("10.0.1.2/24")
    assert a.interface("lan").address6 == IPv6Interface("fd00:1::3/64")
    assert b.interface("lan").address == IPv4Interface("10.0.1.3/24")
    assert b.interface("lan").address6 == IPv6Interface("fd00:1::2/64")
    # wan: an empty value means auto; r1 has a static IPv4 and an automatic IPv6
    assert a.interface("wan").address == IPv4Interface("198.18.0.2/24")
    assert a.interface("wan").address6 == IPv6Interface("2001:db8:2::1/64")
    assert r1.interface("wan").address == IPv4Interface("198.18.0.1/24")
    assert r1.interface("wan").address6 == IPv6Interface("2001:db8:2::2/64")
    assert c.interface("wan").address == IPv4Interface("198.18.0.3/24")
    assert c.interface("wan").address6 == IPv6Interface("2001:db8:2::3/64")
    assert [i.ifname for i in r1.interfaces] == ["eth0", "eth1"]
    assert [i.ifname for i in a.interfaces] == ["lan", "wan"]


def test_default_routes_follow_the_family_of_the_gateway() -> None:
    b = good("dual_stack_auto").hosts["b"]
    assert [str(r.to) for r in b.routes] == ["0.0.0.0/0", "::/0", "198.18.0.0/15"]
    assert [type(r.via) for r in b.routes] == [IPv4Address, IPv6Address, IPv4Address]


def test_ipv6_only_topology() -> None:
    topo = good("ipv6_only")
    assert topo.networks["lan"].subnet is None
    assert topo.networks["lan"].subnet6 == IPv6Network("fd00:10::/64")
    h1 = topo.hosts["h1"].interface("lan")
    assert h1.address is None
    assert h1.address6 == IPv6Interface("fd00:10::11/64")
    assert topo.hosts["h1"].routes == (Route(IPv6Network("::/0"), IPv6Address("fd00:10::1")),)
    assert topo.hosts["h2"].interface("wan").address6 == IPv6Interface("fd00:20::2/64")
    assert topo.hosts["h2"].services == (Service("udp", 53, "::"),)


def test_isolated_hosts_and_no_networks() -> None:
    topo = good("isolated")
    assert dict(topo.networks) == {}
    assert topo.hosts["alone"].interfaces == ()
    assert dict(topo.hosts["also_alone"].sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert topo.hosts["also_alone"].services == (
        Service("tcp", 80, None),
        Service("udp", 80, None),
    )


def test_anchors_aliases_and_merge_keys() -> None:
    topo = good("anchors")
    h1, h2, r1 = topo.hosts["h1"], topo.hosts["h2"], topo.hosts["r1"]
    assert h1.interface("lan").address == IPv4Interface("10.0.1.2/24")
    assert h2.interface("lan").address == IPv4Interface("10.0.1.3/24")
    assert h1.routes == h2.routes == (Route(IPv4Network("0.0.0.0/0"), IPv4Address("10.0.1.1")),)
    assert r1.routes == ()
    assert r1.forwarding is True
    assert r1.interface("lan").address == IPv4Interface("10.0.1.1/24")
    assert dict(r1.sysctls) == {"net.ipv4.tcp_fin_timeout": "15"}


def test_sysctls_are_normalised_strings_in_an_order_the_kernel_accepts() -> None:
    topo = good("sysctls")
    lowered = topo.hosts["lowered"].sysctls
    assert list(lowered.items()) == [
        ("net.ipv4.ip_unprivileged_port_start", "100"),
        ("net.ipv4.ip_local_port_range", "500 600"),
        ("net.core.somaxconn", "4096"),
    ]
    raised = topo.hosts["raised"].sysctls
    assert list(raised)[:2] == [
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
    ]
    assert raised["net.ipv4.tcp_tw_reuse"] == "2"
    assert all(isinstance(v, str) for v in raised.values())


def test_services_resolve_addresses() -> None:
    srv = good("services").hosts["srv"]
    assert srv.services == (
        Service("tcp", 443, None),
        Service("udp", 443, None),
        Service("tcp", 80, "10.0.1.10"),
        Service("tcp", 80, "fd00:1::10"),
        Service("tcp", 8080, "0.0.0.0"),
        Service("udp", 65535, "::"),
        Service("tcp", 1, None),
    )


def test_the_example_from_the_design_with_explicit_router_addresses() -> None:
    topo = parse_topology(
        """
name: routed
networks:
  lan: {subnet: 10.0.1.0/24, subnet6: "fd00:1::/64"}
  wan: {subnet: 10.0.2.0/24}
hosts:
  h1:
    networks: {lan: 10.0.1.11}
    routes: [{to: default, via: 10.0.1.1}, {to: "fd00:2::/64", via: "fd00:1::1"}]
  r1:
    networks: {lan: {address: 10.0.1.1, address6: "fd00:1::1"}, wan: 10.0.2.1}
    forwarding: true
  h2:
    networks: {wan: 10.0.2.12}
    routes: [{to: default, via: 10.0.2.1}]
    sysctls: {net.ipv4.ip_local_port_range: "40000 40009"}
    services: [{proto: tcp, port: 443}, {proto: udp, port: 53}]
    backend: netns
"""
    )
    assert topo.source == "<string>"
    assert topo.hosts["h1"].interface("lan").address6 == IPv6Interface("fd00:1::2/64")
    assert topo.hosts["h2"].sysctls["net.ipv4.ip_local_port_range"] == "40000 40009"
    assert topo.hosts["h2"].services == (Service("tcp", 443, None), Service("udp", 53, None))


def test_interface_helper_raises_keyerror_for_unconnected_network() -> None:
    host = load_topology(TOPOLOGIES / "lan.yaml").hosts["h1"]
    assert isinstance(host.interface("lan"), Interface)
    with pytest.raises(KeyError, match="not on network wan"):
        host.interface("wan")


@pytest.mark.parametrize(
    ("target", "attribute", "value"),
    [
        ("topology", "name", "other"),
        ("network", "subnet", None),
        ("host", "forwarding", True),
        ("interface", "address", None),
        ("route", "via", IPv4Address("10.0.1.2")),
        ("service", "port", 1),
    ],
)
def test_model_objects_are_frozen(target: str, attribute: str, value: Any) -> None:
    topo = good("dual_stack_auto")
    b = topo.hosts["b"]
    objects: dict[str, Any] = {
        "topology": topo,
        "network": topo.networks["lan"],
        "host": b,
        "interface": b.interfaces[0],
        "route": b.routes[0],
        "service": good("services").hosts["srv"].services[0],
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(objects[target], attribute, value)


def test_mappings_are_read_only_and_sequences_are_tuples() -> None:
    topo = good("sysctls")
    with pytest.raises(TypeError):
        topo.hosts["x"] = topo.hosts["lowered"]  # type: ignore[index]
    with pytest.raises(TypeError):
        topo.networks["x"] = Network("x", None, None)  # type: ignore[index]
    with pytest.raises(TypeError):
        topo.hosts["raised"].sysctls["net.core.somaxconn"] = "1"  # type: ignore[index]
    host = good("dual_stack_auto").hosts["b"]
    assert isinstance(host.interfaces, tuple)
    assert isinstance(host.routes, tuple)
    assert isinstance(host.services, tuple)


def test_no_auto_or_default_left_in_the_model() -> None:
    for path in [*TOPOLOGIES.glob("*.yaml"), *GOOD.glob("*.yaml")]:
        topo = load_topology(path)
        for host in topo.hosts.values():
            assert isinstance(host, Host)
            for interface in host.interfaces:
                network = topo.networks[interface.network]
                assert (interface.address is None) == (network.subnet is None), path
                assert (interface.address6 is None) == (network.subnet6 is None), path
                if interface.address:
                    assert interface.address.network == network.subnet
                if interface.address6:
                    assert interface.address6.network == network.subnet6
            for route in host.routes:
                assert route.to.version == route.via.version


def test_parse_and_load_give_equal_results(tmp_path: Path) -> None:
    text = (TOPOLOGIES / "routed.yaml").read_text(encoding="utf-8")
    path = tmp_path / "routed.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_topology(path)
    parsed = parse_topology(text, filename=str(path))
    assert loaded == parsed


def test_bad_input_raises_topology_error_and_nothing_else() -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology("name: x\nhosts: {h1: {networks: {lan: auto}}}\n")
    (problem,) = caught.value.problems
    assert problem.file == "<string>"
    assert (problem.line, problem.column) == (2, 25)  # the key `lan`
    assert problem.path == "hosts.h1.networks.lan"
