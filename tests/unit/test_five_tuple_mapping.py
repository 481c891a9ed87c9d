"""How five_tuple pairs client flows with the server's: an echo decides over a tuple match."""

from __future__ import annotations

from harness.checks.suites.five_tuple import Conn, Echo, Served
from harness.checks.suites.five_tuple._judge import _map

SERVER = ("198.18.0.12", 443)
ROUTER = "198.18.0.1"


def test_a_router_flow_remapped_behind_its_own_nat_counts_as_translated() -> None:
    # c1's flow is masqueraded to the router's address and port 40001. The router's own
    # flow picked 40001 too, collided, and was remapped to 40002. The server so holds
    # the router's client tuple, but for c1's flow, as the router's echo shows.
    c1 = Conn("c1", 10, 1, "tcp", ("10.0.10.11", 40001), SERVER)
    r = Conn("r", 20, 1, "tcp", (ROUTER, 40001), SERVER)
    served_c1 = Served(30, 1, "tcp", SERVER, (ROUTER, 40001))
    served_r = Served(30, 2, "tcp", SERVER, (ROUTER, 40002))
    mapping = _map([c1, r], [served_c1, served_r], [Echo(r, served_r)])
    assert mapping.per_host == {"c1": (0, 1), "r": (0, 1)}
    assert (mapping.identical, mapping.translated, mapping.unexplained) == (0, 2, 0)
    assert mapping.samples == ("r 198.18.0.1:40001 -> 198.18.0.1:40002",)


def test_without_an_echo_a_tuple_the_server_holds_is_identical() -> None:
    r = Conn("r", 20, 1, "tcp", (ROUTER, 20001), SERVER)
    mapping = _map([r], [Served(30, 2, "tcp", SERVER, (ROUTER, 20001))], [])
    assert mapping.per_host == {"r": (1, 0)}
    assert (mapping.identical, mapping.translated, mapping.unexplained) == (1, 0, 0)
