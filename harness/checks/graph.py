"""Pictures of labs: a topology as a Graphviz graph, a truth table as an SVG grid.

    dot = topology_dot(topology)            # DOT text, no tools needed
    svg = render(dot, "svg")                # Graphviz `dot` (Debian package graphviz)
    svg = render_matrix_svg(cells)          # plain SVG, no tools needed

Hosts are tables (name, routes, services, firewall), routers stand out in colour,
networks are rounded boxes with their subnets, and each edge is one interface labelled
with its name and addresses. The DOT is written here rather than through a library: it
is a few HTML-like labels, and escaping them is the only subtle part.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_network
from typing import TYPE_CHECKING, Literal

from harness.errors import SEE_DOCTOR, EnvironmentProblem, HarnessError

if TYPE_CHECKING:  # light at import: the command line loads this module for every command
    from harness.checks.probe import ProbeResult, Verdict
    from harness.topology import FirewallRule, Host, Interface, Network, Topology

Format = Literal["dot", "svg", "png"]
FORMATS: tuple[Format, ...] = ("dot", "svg", "png")
RENDER_TIMEOUT = 60.0
FONT = "Helvetica,Arial,sans-serif"  # CSS-style: viewers fall back to a sans font

HOST_FILL = "#eef2f7"
ROUTER_FILL = "#fde7c8"
NETWORK_FILL = "#dff0e3"
ALLOW_COLOUR = "#1b5e20"
DENY_COLOUR = "#b71c1c"
SHOWN_NETS = 3
SLACK = "&#160;" * 3  # sources or destinations of a rule drawn before "+N"


def _e(text: object) -> str:
    """Text escaped for an HTML-like Graphviz label."""
    return html.escape(str(text), quote=True)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _network_label(network: Network) -> str:
    lines = [f"<b>{_e(network.name)}</b>"]
    lines += [_e(s) for s in (network.subnet, network.subnet6) if s is not None]
    return "<" + "<br/>".join(lines) + ">"


def _interface_label(interface: Interface) -> str:
    lines = [f"<b>{_e(interface.ifname)}</b>"]
    lines += [_e(a) for a in (interface.address, interface.address6) if a is not None]
    return "<" + "<br/>".join(lines) + ">"


def host_details(host: Host, names: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(section, line) pairs drawn under a host's name: routes, services, firewall."""
    rows: list[tuple[str, str]] = []
    for route in host.routes:
        to = "default" if route.to.prefixlen == 0 else str(route.to)
        rows.append(("route", f"{to} via {route.via}"))
    if host.forwarding:
        rows.append(("forwarding", "IPv4 and IPv6 forwarding on"))
    for service in host.services:
        where = f" on {service.address}" if service.address else ""
        rows.append(("service", f"{service.proto}/{service.port}{where}"))
    if host.firewall is not None:
        for hook, chain in host.firewall.chains().items():
            state = "" if chain.stateful else ", stateless"
            rows.append(("firewall", f"{hook}: policy {chain.policy}{state}"))
            rows += [("", rule_text(rule, names)) for rule in chain.rules]
    if host.nft:
        statements = [
            line.strip()
            for line in host.nft.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        rows.append(("nft", f"raw nft script, {len(statements)} lines"))
    return rows


def address_names(topology: Topology) -> dict[str, str]:
    """Subnet or host address (as /32, /128) → the network or host name it came from."""
    names: dict[str, str] = {}
    for network in topology.networks.values():
        for subnet in (network.subnet, network.subnet6):
            if subnet is not None:
                names[str(subnet)] = network.name
    for host in topology.hosts.values():
        for interface in host.interfaces:
            for address in (interface.address, interface.address6):
                if address is not None:
                    names[str(ip_network(address.ip))] = host.name
    return names


def rule_text(rule: FirewallRule, names: Mapping[str, str] | None = None) -> str:
    """A firewall rule in a few words: "allow tcp 22 from admin to web". `names` turns
    the resolved subnets and addresses back into the network and host names they were."""
    words: list[str] = [rule.action, rule.proto]
    if rule.ports:
        words.append(",".join(str(a) if a == b else f"{a}-{b}" for a, b in rule.ports))
    for key, nets in (("from", rule.sources), ("to", rule.destinations)):
        if nets:
            named = list(dict.fromkeys((names or {}).get(str(n), str(n)) for n in nets))
            shown = ", ".join(named[:SHOWN_NETS])
            more = f" +{len(named) - SHOWN_NETS}" if len(named) > SHOWN_NETS else ""
            words.append(f"{key} {shown}{more}")
    if rule.reject_with:
        words.append(f"with {rule.reject_with}")
    if rule.family:
        words.append(f"(IPv{rule.family} only)")
    return " ".join(words)


def _colour(text: str) -> str:
    """Verdicts in colour: what lets traffic through green, what stops it red."""
    first = text.split(" ", 1)[0]
    if first in ("allow",) or text.endswith("policy accept"):
        return ALLOW_COLOUR
    if first in ("drop", "reject") or "policy drop" in text:
        return DENY_COLOUR
    return "#000000"


def _font(colour: str, text: str) -> str:
    # Graphviz refuses an empty <font></font>.
    return f'<font color="{colour}">{_e(text)}</font>' if text else ""


def _host_label(host: Host, names: Mapping[str, str]) -> str:
    router = host.forwarding
    fill = ROUTER_FILL if router else HOST_FILL
    title = f"<b>{_e(host.name)}</b>" + ("&#160;· router" if router else "")
    rows = [
        f'<tr><td colspan="2" bgcolor="{fill}" cellpadding="4">'
        f'<font point-size="12">{title}</font></td></tr>'
    ]
    for section, line in host_details(host, names):
        rows.append(
            f'<tr><td align="left">{_font("#555555", section)}</td>'
            # Slack after the text: viewers' fonts may run wider than dot measured.
            f'<td align="left">{_font(_colour(line), line)}{SLACK}</td></tr>'
        )
    border = 2 if router else 1
    return (
        f'<<table border="{border}" cellborder="0" cellspacing="0" cellpadding="2">'
        + "".join(rows)
        + "</table>>"
    )


def topology_dot(topology: Topology) -> str:
    """The topology as Graphviz DOT text (an undirected graph, laid out left to right)."""
    lines = [
        f"graph {_quoted(topology.name)} {{",
        f'  graph [rankdir=LR, fontname="{FONT}", labelloc=t, fontsize=14, '
        f"nodesep=0.35, ranksep=1.1, pad=0.3, "
        f"label={_quoted('topology ' + topology.name)}];",
        f'  node [fontname="{FONT}", fontsize=10];',
        f'  edge [fontname="{FONT}", fontsize=9, color="#666666"];',
    ]
    for network in topology.networks.values():
        lines.append(
            f'  {_quoted("net:" + network.name)} [shape=box, style="rounded,filled", '
            f'fillcolor="{NETWORK_FILL}", label={_network_label(network)}];'
        )
    names = address_names(topology)
    for host in topology.hosts.values():
        label = _host_label(host, names)
        lines.append(f"  {_quoted('host:' + host.name)} [shape=plain, label={label}];")
    depth = _depths(topology)
    for host in topology.hosts.values():
        for interface in host.interfaces:
            ends = [f"host:{host.name}", f"net:{interface.network}"]
            ends.sort(key=lambda node: depth[node])  # the tail ranks left of the head
            lines.append(
                f"  {_quoted(ends[0])} -- {_quoted(ends[1])} [label={_interface_label(interface)}];"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _depths(topology: Topology) -> dict[str, int]:
    """Breadth-first distance of every node from an end host, component by component.

    Graphviz ranks an edge's tail left of its head, so pointing every edge away from the
    start lays a routed path out as a chain: h1, lan, r1, wan, h2.
    """
    neighbours: dict[str, list[str]] = {f"net:{n}": [] for n in topology.networks}
    for host in topology.hosts.values():
        node = f"host:{host.name}"
        neighbours[node] = [f"net:{i.network}" for i in host.interfaces]
        for interface in host.interfaces:
            neighbours[f"net:{interface.network}"].append(node)
    hosts = list(topology.hosts.values())
    starts = [f"host:{h.name}" for h in hosts if not h.forwarding]
    starts += [f"host:{h.name}" for h in hosts if h.forwarding] + list(neighbours)
    depth: dict[str, int] = {}
    for start in starts:
        if start in depth:
            continue
        depth[start] = 0
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for other in neighbours[node]:
                if other not in depth:
                    depth[other] = depth[node] + 1
                    queue.append(other)
    return depth


def render(dot: str, fmt: Format) -> bytes:
    """Lay out and draw `dot` with Graphviz; "dot" gives the text back unchanged."""
    if fmt == "dot":
        return dot.encode()
    if fmt not in FORMATS:
        raise HarnessError(f"unknown graph format {fmt!r}; use one of {', '.join(FORMATS)}")
    program = shutil.which("dot")
    if program is None:
        raise EnvironmentProblem(
            "drawing a graph needs Graphviz's `dot`; install it with `apt-get install graphviz` "
            f"or ask for --format dot; {SEE_DOCTOR}"
        )
    try:
        result = subprocess.run(
            [program, f"-T{fmt}"],
            input=dot.encode(),
            capture_output=True,
            timeout=RENDER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"dot did not finish within {RENDER_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        raise HarnessError(f"dot refused the graph: {result.stderr.decode(errors='replace')}")
    return result.stdout


# -- truth tables ------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixCell:
    """One probed cell: what `source` saw of `target`'s port, and what was expected."""

    source: str
    target: str
    proto: str
    port: int
    observed: str  # open, closed, filtered, open|filtered
    expected: str | None = None  # None: nothing was expected of this cell
    family: int = 4


STATE_FILL = {
    "open": "#bfe5c4",
    "closed": "#f7d9a8",
    "filtered": "#d6d9de",
    "open|filtered": "#e6e8eb",
}
MISMATCH = "#c62828"
CELL_W, CELL_H, HEAD_W, HEAD_H = 96, 34, 90, 44


def _text(x: float, y: float, text: str, size: int = 11, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{_e(v)}"' for k, v in attrs.items())
    return (
        f'<text x="{x:.0f}" y="{y:.0f}" font-family="{FONT}" font-size="{size}"'
        f' text-anchor="middle"{extra}>{_e(text)}</text>'
    )


def as_cell(item: MatrixCell | ProbeResult | Verdict) -> MatrixCell:
    """A cell of the picture from what harness.checks.probe returns (matrix and check)."""
    from harness.checks.probe import ProbeResult

    if isinstance(item, MatrixCell):
        return item
    if isinstance(item, ProbeResult):
        return MatrixCell(
            item.source, item.target, item.proto, item.port, item.state, None, item.family
        )
    r = item.result
    return MatrixCell(r.source, r.target, r.proto, r.port, r.state, item.expected, r.family)


def render_matrix_svg(
    table: Iterable[MatrixCell | ProbeResult | Verdict], title: str = "truth table"
) -> str:
    """A truth table as an SVG grid: one row per source host, one column per
    target:port/proto; cells coloured by observed state, mismatches outlined in red with
    the expected state. Takes `matrix()` results, a `CheckReport`'s verdicts or cells."""
    cells = [as_cell(item) for item in table]
    sources = list(dict.fromkeys(c.source for c in cells))
    hosts = list(dict.fromkeys([c.source for c in cells] + [c.target for c in cells]))
    columns = sorted(
        dict.fromkeys((c.target, c.port, c.proto, c.family) for c in cells),
        key=lambda c: (hosts.index(c[0]), c[3], c[2], c[1]),  # host, family, proto, port
    )
    by_key = {(c.source, c.target, c.port, c.proto, c.family): c for c in cells}
    width = HEAD_W + CELL_W * max(len(columns), 1) + 10
    height = 30 + HEAD_H + CELL_H * max(len(sources), 1) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        _text(width / 2, 20, title, 14, font_weight="bold"),
    ]
    top = 30
    for j, (target, port, proto, family) in enumerate(columns):
        x = HEAD_W + CELL_W * j + CELL_W / 2
        parts.append(_text(x, top + 18, target, 11, font_weight="bold"))
        parts.append(_text(x, top + 34, f"{port}/{proto}" + (" v6" if family == 6 else ""), 10))
    mismatches = 0
    for i, source in enumerate(sources):
        y = top + HEAD_H + CELL_H * i
        parts.append(_text(HEAD_W / 2, y + CELL_H / 2 + 4, source, 11, font_weight="bold"))
        for j, column in enumerate(columns):
            x = HEAD_W + CELL_W * j
            cell = by_key.get((source, *column))
            if cell is None:
                parts.append(
                    f'<rect x="{x + 2}" y="{y + 2}" width="{CELL_W - 4}" height="{CELL_H - 4}" '
                    'fill="white" stroke="#eeeeee"/>'
                )
                continue
            wrong = cell.expected is not None and cell.expected != cell.observed
            mismatches += wrong
            fill = STATE_FILL.get(cell.observed, "#ffffff")
            stroke = f'stroke="{MISMATCH}" stroke-width="3"' if wrong else 'stroke="#999999"'
            parts.append(
                f'<rect x="{x + 2}" y="{y + 2}" width="{CELL_W - 4}" height="{CELL_H - 4}" '
                f'rx="3" fill="{fill}" {stroke}><title>{_e(_cell_title(cell))}</title></rect>'
            )
            if wrong:
                parts.append(_text(x + CELL_W / 2, y + 15, cell.observed, 10, font_weight="bold"))
                parts.append(
                    _text(x + CELL_W / 2, y + 27, f"want {cell.expected}", 9, fill=MISMATCH)
                )
            else:
                parts.append(_text(x + CELL_W / 2, y + CELL_H / 2 + 4, cell.observed, 10))
    legend_y = top + HEAD_H + CELL_H * max(len(sources), 1) + 22
    summary = f"{len(cells)} cells, {mismatches} not as expected" if cells else "no cells"
    parts.append(_text(width / 2, legend_y, summary, 10, fill=MISMATCH if mismatches else "#333"))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _cell_title(cell: MatrixCell) -> str:
    line = f"{cell.source} → {cell.target}:{cell.port}/{cell.proto}: {cell.observed}"
    return line + (f" (expected {cell.expected})" if cell.expected is not None else "")
