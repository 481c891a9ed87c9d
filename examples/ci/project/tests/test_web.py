"""A user's own test: the lab fixture brings the topology up and tears it down."""

from __future__ import annotations

import pytest

from harness.lab import Lab


@pytest.mark.topology("../topologies/web.yaml")  # relative to this file
def test_the_client_gets_a_page_from_the_web_server(lab: Lab) -> None:
    client = lab.hosts["client"].agent()
    conn = client.connect("tcp", lab.hosts["web"].address("lan"), 8080)
    conn.send("GET / HTTP/1.0\r\n\r\n")
    assert conn.recv().startswith(b"HTTP/1.0 200")
