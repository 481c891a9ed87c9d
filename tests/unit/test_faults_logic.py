"""The pure parts of faults: rates, the nftables scripts, undo on partial failure."""

from __future__ import annotations

import errno
from types import SimpleNamespace
from typing import Any, cast

import pytest

from harness.errors import BackendError, UsageError
from harness.observe.faults import Faults, _all, _loss_script, _partition_script, parse_rate


@pytest.mark.parametrize(
    ("rate", "bits"),
    [(4_000_000, 4_000_000), ("4mbit", 4_000_000), ("512kbit", 512_000), ("1.5gbit", 1.5e9)],
)
def test_rates_in_tc_units(rate: str | int, bits: float) -> None:
    assert parse_rate(rate) == int(bits)


@pytest.mark.parametrize("rate", ["4 MB/s", "fast", "100bit", 10])
def test_bad_rates_are_refused_with_the_fix(rate: str | int) -> None:
    with pytest.raises(UsageError, match="rate"):
        parse_rate(rate)


def test_partition_script_drops_both_families_both_ways() -> None:
    other = cast(Any, SimpleNamespace(addresses={"lan": ["10.0.1.12", "fd00:1::12"]}))
    script = _partition_script("t1", [other])
    assert "table inet t1 {" in script
    assert "hook input priority -300" in script
    assert "ip saddr { 10.0.1.12 } drop" in script
    assert "ip6 daddr { fd00:1::12 } drop" in script


def test_partition_script_without_ipv6_has_no_ip6_rule() -> None:
    other = cast(Any, SimpleNamespace(addresses={"wan": ["10.0.2.12"]}))
    assert "ip6" not in _partition_script("t1", [other])


def test_loss_script_counts_in_hundredths_of_a_percent() -> None:
    script = _loss_script("t2", "p3", 12.5)
    assert 'iifname "p3" numgen random mod 10000 < 1250 drop' in script
    assert 'oifname "p3" numgen random mod 10000 < 1250 drop' in script


def test_a_failed_step_undoes_the_steps_before_it() -> None:
    done: list[str] = []

    def fail() -> None:
        raise BackendError("no")

    steps = [
        (lambda: done.append("a"), lambda: done.append("undo a")),
        (lambda: done.append("b"), lambda: done.append("undo b")),
        (fail, lambda: done.append("undo c")),
    ]
    with pytest.raises(BackendError):
        _all(steps)
    assert done == ["a", "b", "undo b", "undo a"]
    undo = _all(steps[:2])
    undo()
    assert done[-2:] == ["undo b", "undo a"]


def test_netem_is_detected_once_and_other_errors_pass_through() -> None:
    faults = Faults(cast(Any, SimpleNamespace()))
    tries: list[int] = []

    def unknown_kind() -> None:
        tries.append(1)
        raise BackendError("netem", code=errno.ENOENT)  # what a kernel without netem says

    assert faults.netem_available(unknown_kind) is False
    assert faults.netem_available(unknown_kind) is False
    assert tries == [1]  # remembered: no second attempt

    def busy() -> None:
        raise BackendError("netem", code=errno.EEXIST)  # a rate fault holds the root

    with pytest.raises(BackendError):
        Faults(cast(Any, SimpleNamespace())).netem_available(busy)
    assert Faults(cast(Any, SimpleNamespace())).netem_available(lambda: None) is True
