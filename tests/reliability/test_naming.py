"""Guarantee 4 (names): every name a lab makes fits Linux's limits and never collides."""

from __future__ import annotations

import random
import string

from harness.core import naming
from harness.core.ledger import is_lab_id, new_lab_id
from tests.reliability.support import cycles

HOST_CHARS = string.ascii_lowercase + string.digits + "-_"


def random_host(rng: random.Random) -> str:
    return rng.choice(string.ascii_lowercase) + "".join(
        rng.choice(HOST_CHARS) for _ in range(rng.randint(0, 39))
    )


def test_a_million_generated_names_fit_and_never_collide() -> None:
    rng = random.Random(1)
    labs = sorted({new_lab_id() for _ in range(cycles(2_000, 10_000))})
    hosts = sorted({random_host(rng) for _ in range(500)})
    assert all(is_lab_id(lab) for lab in labs)
    seen: set[str] = set()
    for lab in labs:  # 2000 labs x 500 hosts: a million (lab, host) pairs
        names = [naming.host_netns(lab, host) for host in hosts]
        # A namespace name is a file name under /run/netns and, for containers later,
        # a container name: keep it short.
        assert max(map(len, names)) <= 50
        seen.update(names)
        seen.add(naming.fabric_netns(lab))
    assert len(seen) == len(labs) * (len(hosts) + 1), "two (lab, host) pairs share a name"
    # Each name is claimed by its own lab only, even where one id is a prefix of another.
    for _ in range(20_000):
        lab, other, host = rng.choice(labs), rng.choice(labs), rng.choice(hosts)
        name = naming.host_netns(lab, host)
        assert naming.is_lab_netns(lab, name)
        assert naming.is_lab_netns(other, name) == (other == lab)


def test_fabric_port_names_stay_within_ifnamsiz() -> None:
    names = {naming.fabric_port(i) for i in range(1, 100_001)}
    assert len(names) == 100_000
    assert max(len(n) for n in names) <= naming.IFNAMSIZ
