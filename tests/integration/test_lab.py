"""Labs on real namespaces: bring-up, the kernel's view, traffic, teardown, failures."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from harness import Lab, load_topology
from harness.core import ledger
from harness.errors import BackendError
from harness.lab import LabHost
from tests.integration.rootns import snapshot

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def kernel_view(netns: str) -> tuple[dict[str, set[str]], set[tuple[str | None, str | None]]]:
    """Addresses per interface and (dst, gateway) routes, as the kernel reports them."""
    with IPRoute(netns=netns, flags=0) as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        addresses: dict[str, set[str]] = {}
        for addr in ipr.addr("dump"):
            ip = addr.get("address")
            if not ip.startswith("fe80"):
                addresses.setdefault(names[addr["index"]], set()).add(f"{ip}/{addr['prefixlen']}")
        routes = {
            (r.get("dst"), r.get("gateway"))
            for r in ipr.route("dump")
            if r.get("gateway") is not None
        }
        up = {names[link["index"]] for link in ipr.link("dump") if link["flags"] & 1}
    assert set(addresses) <= up, f"interfaces with addresses that are down in {netns}"
    return addresses, routes


def test_lan_comes_up_with_the_addresses_the_topology_gives(backend: str) -> None:
    topology = load_topology(TOPOLOGIES / "lan.yaml")
    with Lab.up(topology, backend=backend) as lab:
        assert set(lab.hosts) == {"h1", "h2", "h3"}
        for name, host in lab.hosts.items():
            # a container's namespace is named too, so `ip netns exec` works on it
            assert host.netns == f"nh-{lab.id}-{name}"
            assert host.netns in os.listdir("/run/netns")
            if backend == "docker":
                assert host.handle.details["container"] == f"nh-{lab.id}-{name}"
            addresses, _ = kernel_view(host.netns)
            spec = topology.hosts[name].interface("lan")
            expected = {str(a) for a in (spec.address, spec.address6) if a is not None}
            assert addresses["lo"] >= {"127.0.0.1/8"}
            assert addresses["lan"] == expected
        assert lab.hosts["h2"].address("lan") == "10.0.1.12"
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"nh-{lab.id}")]
    assert not [h for h in lab.hosts.values() if os.path.exists(h.handle.netns_path)]


def test_tcp_and_udp_between_hosts_reach_exactly_the_listening_process(backend: str) -> None:
    with Lab.up(TOPOLOGIES / "lan.yaml", backend=backend) as lab:
        server = lab.hosts["h2"].agent()
        other = lab.hosts["h2"].agent()  # a second application on the same host
        client = lab.hosts["h1"].agent()
        assert server.pid != other.pid
        for proto in ("tcp", "udp"):
            listener = server.listen(proto, port=0)
            other.listen(proto, port=0)
            conn = client.connect(proto, lab.hosts["h2"].address("lan"), listener.port)
            assert conn.local[0] == "10.0.1.11"
            assert conn.peer == ("10.0.1.12", listener.port)
            echo = conn.request(f"hello over {proto}")
            assert echo.pid == server.pid
            assert echo.data == f"hello over {proto}"
            # No NAT: the server sees exactly the client's own endpoint.
            assert tuple(echo.peer) == tuple(conn.local)


def test_ipv6_on_the_lan(backend: str) -> None:
    with Lab.up(TOPOLOGIES / "lan.yaml", backend=backend) as lab:
        server = lab.hosts["h3"].agent()
        listener = server.listen("tcp", address="::", port=0)
        target = lab.hosts["h3"].address("lan", family=6)
        conn = lab.hosts["h1"].agent().connect("tcp", target, listener.port)
        echo = conn.request("v6")
        assert echo.pid == server.pid
        assert conn.local[0] == lab.hosts["h1"].address("lan", family=6)


def test_routed_traffic_crosses_the_router_in_both_families(backend: str) -> None:
    topology = load_topology(TOPOLOGIES / "routed.yaml")
    with Lab.up(topology, backend=backend) as lab:
        h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
        _, routes = kernel_view(h1.netns)
        gateways = {gw for _, gw in routes}
        assert {str(r.via) for r in topology.hosts["h1"].routes} <= gateways
        server = h2.agent()
        for family, wildcard in ((4, "0.0.0.0"), (6, "::")):
            for proto in ("tcp", "udp"):
                listener = server.listen(proto, address=wildcard, port=0)
                conn = h1.agent().connect(proto, h2.address(family=family), listener.port)
                echo = conn.request("across")
                assert echo.pid == server.pid
                assert echo.peer[0] == h1.address(family=family)


def test_host_forwarding_is_set_only_on_the_router(backend: str) -> None:
    with Lab.up(TOPOLOGIES / "routed.yaml", backend=backend) as lab:
        forwarding = {
            name: host.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
            for name, host in lab.hosts.items()
        }
        assert forwarding == {"h1": "0", "r1": "1", "h2": "0"}


def test_nothing_appears_in_the_root_namespace_during_or_after() -> None:
    before = snapshot()
    with Lab.up(TOPOLOGIES / "routed.yaml") as lab:
        during = snapshot()
        lab_namespaces = {n for n in during.namespaces - before.namespaces}
        assert lab_namespaces == {f"nh-{lab.id}"} | {f"nh-{lab.id}-{h}" for h in lab.hosts}
        assert before.links == during.links
        assert before.addresses == during.addresses
        assert before.routes == during.routes
        assert before.sysctls == during.sysctls
    assert before.difference(snapshot()) == []


def test_commands_run_inside_the_host_with_their_exit_code(backend: str) -> None:
    with Lab.up(TOPOLOGIES / "lan.yaml", backend=backend) as lab:
        result = lab.hosts["h1"].run(["sh", "-c", "cat /proc/net/dev; exit 3"])
        assert result.returncode == 3
        assert "lan:" in result.stdout
        assert "eth0" not in result.stdout


def test_a_failed_bring_up_unwinds_and_spares_what_is_not_ours() -> None:
    before = snapshot()
    topology = load_topology(TOPOLOGIES / "lan.yaml")
    foreign = "nh-zzzzzz-h2"  # someone else's namespace with the name our lab would use
    fd = None
    try:
        os.makedirs("/run/netns", exist_ok=True)
        from harness.core import _netns

        fd = _netns.create(foreign)
        with pytest.raises(BackendError, match="already exists"):
            Lab.up(topology, lab_id="zzzzzz")
        assert foreign in os.listdir("/run/netns")
        left = [n for n in os.listdir("/run/netns") if n.startswith("nh-zzzzzz") and n != foreign]
        assert left == []
        assert not (ledger.labs_dir() / "zzzzzz").exists()
    finally:
        if fd is not None:
            os.close(fd)
        from harness.core import _netns

        _netns.remove(f"/run/netns/{foreign}")
    assert before.difference(snapshot()) == []


def test_down_is_idempotent() -> None:
    lab = Lab.up(TOPOLOGIES / "lan.yaml")
    lab.down()
    lab.down()
    assert not lab.ledger_dir.exists()


def test_one_hundred_hosts_come_up_with_every_agent_answering() -> None:
    with Lab.up(TOPOLOGIES / "star100.yaml") as lab:
        assert len(lab.hosts) == 100
        assert len(os.listdir("/run/netns")) >= 101
        # every host reaches its neighbour: a connection from each host to the next
        first = lab.hosts["h001"]
        server = first.agent()
        listener = server.listen("udp", port=0)
        for name in ("h002", "h050", "h100"):
            conn = lab.hosts[name].agent().connect("udp", first.address(), listener.port)
            assert conn.request(name).pid == server.pid
        assert lab.timings["up"] < 5.0


def test_sockets_bind_to_a_lab_address_only_inside_its_host(backend: str) -> None:
    # The lab's addresses do not exist in the root namespace.
    with Lab.up(TOPOLOGIES / "lan.yaml", backend=backend) as lab:
        address = lab.hosts["h1"].address()
        with socket.socket() as sock, pytest.raises(OSError, match="assign") as raised:
            sock.bind((address, 0))
        assert raised.value.errno == errno.EADDRNOTAVAIL


SERVICES = """
name: services
networks:
  lan: {subnet: 10.0.5.0/24, subnet6: "fd00:5::/64"}
hosts:
  client:
    networks: {lan: 10.0.5.10}
    sysctls: {net.ipv4.ip_local_port_range: "40000 40009"}
  web:
    networks: {lan: 10.0.5.20}
    services: [{proto: tcp, port: 443}, {proto: udp, port: 53}]
"""


def test_services_listen_from_bring_up_and_sysctls_apply(backend: str) -> None:
    from harness.topology import parse_topology

    with Lab.up(parse_topology(SERVICES, "services.yaml"), backend=backend) as lab:
        web, client = lab.hosts["web"], lab.hosts["client"]
        listening = web.run(["ss", "-H", "-tuln"]).stdout
        assert "0.0.0.0:443" in listening
        assert "[::]:443" in listening
        assert "0.0.0.0:53" in listening
        agent = client.agent()
        for proto, port in (("tcp", 443), ("udp", 53)):
            for family in (4, 6):
                conn = agent.connect(proto, web.address(family=family), port)
                echo = conn.request(f"{proto}/{port}")
                assert echo.data == f"{proto}/{port}"
                if family == 4:
                    assert 40000 <= conn.local[1] <= 40009  # the host's port range
        assert client.run(["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).stdout.split() == [
            "40000",
            "40009",
        ]
        # other hosts keep the kernel's default range
        assert web.run(["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).stdout.split() != [
            "40000",
            "40009",
        ]


NAT = """
name: nat
networks:
  inside: {subnet: 10.0.10.0/24}
  outside: {subnet: 198.18.0.0/24}
hosts:
  client: {networks: {inside: 10.0.10.11}, routes: [{to: default, via: 10.0.10.1}]}
  router:
    networks: {inside: 10.0.10.1, outside: 198.18.0.1}
    forwarding: true
    nft: |
      table ip nat {
        chain postrouting {
          type nat hook postrouting priority srcnat; policy accept;
          oifname "outside" masquerade
        }
      }
  server: {networks: {outside: 198.18.0.10}}
"""


def ruleset(host: LabHost) -> str:
    """The host's nft ruleset, listed by the controller's nft (images have none)."""
    argv = ["nsenter", f"--net={host.handle.netns_path}", "nft", "list", "ruleset"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_nft_scripts_apply_inside_the_host_only(backend: str) -> None:
    from harness.topology import parse_topology

    before = snapshot()
    with Lab.up(parse_topology(NAT, "nat.yaml"), backend=backend) as lab:
        assert "masquerade" in ruleset(lab.hosts["router"])
        assert "masquerade" not in ruleset(lab.hosts["client"])
        server = lab.hosts["server"].agent()
        port = server.listen("tcp").port
        conn = lab.hosts["client"].agent().connect("tcp", "198.18.0.10", port)
        echo = conn.request("through nat")
        assert conn.local[0] == "10.0.10.11"
        assert echo.peer[0] == "198.18.0.1"  # the server sees the router: translated
    assert before.difference(snapshot()) == []


def test_an_nft_script_nft_refuses_stops_bring_up_and_leaves_nothing() -> None:
    from harness.topology import parse_topology

    before = snapshot()
    broken = NAT.replace("masquerade\n", "masquerade-please\n")
    with pytest.raises(BackendError, match="host router: nft refused"):
        Lab.up(parse_topology(broken, "nat.yaml"))
    assert before.difference(snapshot()) == []
