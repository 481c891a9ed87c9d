"""The topology file as written: pydantic models for its structure, and naming rules.

These models check shape only (which keys exist, which are required, their types) and
are the source of the JSON Schema, so the schema and the loader cannot disagree. What
the values mean (addresses, subnets, names) is checked afterwards, in `_checks`, with
messages that point at the line; the schema carries those rules as hints for editors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from harness.topology._sysctls import SYSCTLS
from harness.topology.model import BACKEND_NAMES, DEFAULT_BACKEND

NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
TOPOLOGY_NAME_MAX = 40
HOST_NAME_MAX = 40  # namespaces are nh-<6-char lab id>-<host>; docker hostnames
IFNAME_MAX = 15  # Linux IFNAMSIZ - 1; network names are the default ifnames
PROGRAM_NAME_MAX = 40  # a `run:` name is part of its log file's name
READY_TIMEOUT = 10.0  # seconds a program gets to listen on its `ready` sockets
READY_TIMEOUT_MAX = 3600.0  # longer is a typo, not a slow server
RESERVED_IFNAMES = frozenset({"lo", "all", "default"})  # taken inside every namespace


def _name_rule(max_length: int) -> dict[str, Any]:
    return {"pattern": NAME_PATTERN, "maxLength": max_length}


def _optional(extra: dict[str, Any] | None = None) -> Any:
    """Schema hook for a field that may be left out but not written as null."""

    def edit(schema: dict[str, Any]) -> None:
        schema.pop("default", None)
        members = [m for m in schema.pop("anyOf", []) if m.get("type") != "null"]
        if len(members) == 1:
            schema.update(members[0])
        elif members:  # pragma: no cover - every optional field has one non-null type
            schema["anyOf"] = members
        schema.update(extra or {})

    return edit


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RawNetwork(_Strict):
    """A network: one L2 segment; give it an IPv4 subnet, an IPv6 subnet, or both."""

    model_config = ConfigDict(title="Network")

    subnet: str | None = Field(
        None,
        description="IPv4 subnet in CIDR form, inside 10.0.0.0/8 or 198.18.0.0/15.",
        examples=["10.0.1.0/24"],
        json_schema_extra=_optional(),
    )
    subnet6: str | None = Field(
        None,
        description="IPv6 subnet in CIDR form, inside fd00::/8 or 2001:db8::/32.",
        examples=["fd00:1::/64"],
        json_schema_extra=_optional(),
    )
    capture: bool = Field(
        False,
        description="Record every frame on this network to a pcap file while the lab runs.",
    )


class RawAttachment(_Strict):
    """A host's interface on a network, spelled out."""

    model_config = ConfigDict(title="Attachment")

    address: str = Field(
        "auto",
        description="IPv4 address inside the network's subnet (no /prefix), or auto.",
        examples=["10.0.1.11", "auto"],
    )
    address6: str = Field(
        "auto",
        description="IPv6 address inside the network's subnet6 (no /prefix), or auto.",
        examples=["fd00:1::11", "auto"],
    )
    ifname: str | None = Field(
        None,
        description="Interface name inside the host; defaults to the network's name.",
        examples=["eth0"],
        json_schema_extra=_optional(_name_rule(IFNAME_MAX)),
    )
    capture: bool = Field(False, description="Record every frame of this interface to a pcap file.")


def _attachment_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "mapping"
    return "empty" if value is None else "text"


AttachmentValue = Annotated[
    Annotated[str, Tag("text")]
    | Annotated[RawAttachment, Tag("mapping")]
    | Annotated[None, Tag("empty")],
    Discriminator(_attachment_kind),
]


def _sysctl_kind(value: Any) -> str:
    return "number" if isinstance(value, int) and not isinstance(value, bool) else "text"


SysctlValue = Annotated[
    Annotated[str, Tag("text")] | Annotated[int, Tag("number")],
    Discriminator(_sysctl_kind),
]


class RawRoute(_Strict):
    """A static route through a gateway on one of the host's networks."""

    model_config = ConfigDict(title="Route")

    to: str = Field(
        description="Destination: `default` (0.0.0.0/0 or ::/0 by the family of via) "
        "or a network in CIDR form.",
        examples=["default", "10.0.2.0/24", "fd00:2::/64"],
    )
    via: str = Field(
        description="Gateway address, inside a subnet this host is connected to.",
        examples=["10.0.1.1", "fd00:1::1"],
    )


class RawService(_Strict):
    """A listener the host opens when the lab comes up."""

    model_config = ConfigDict(title="Service")

    proto: Literal["tcp", "udp"] = Field(description="Transport protocol.", examples=["tcp"])
    port: int = Field(ge=1, le=65535, description="Port to listen on.", examples=[443])
    address: str | None = Field(
        None,
        description="Address to bind: one of the host's addresses, 0.0.0.0 or ::. "
        "Not given: every address.",
        examples=["10.0.2.12", "0.0.0.0", "::"],
        json_schema_extra=_optional(),
    )
    process: str | None = Field(
        None,
        description="The process that listens here itself: a `run:` program of the host, "
        "or `main` (a docker host's own main process). Not given: netharness's agent opens "
        "the listener.",
        examples=["web", "main"],
        json_schema_extra=_optional(_name_rule(PROGRAM_NAME_MAX)),
    )


# Tags of the unions below; `_structure.clean_loc` drops them from error locations.
UNION_TAGS = frozenset({"<one>", "<list>", "<number>", "<text>"})


def _one_or_list(value: Any) -> str:
    return "<list>" if isinstance(value, list) else "<one>"


def _number_or_text(value: Any) -> str:
    return "<number>" if isinstance(value, int) and not isinstance(value, bool) else "<text>"


Names = Annotated[
    Annotated[str, Tag("<one>")] | Annotated[list[str], Tag("<list>")],
    Discriminator(_one_or_list),
]
PortItem = Annotated[
    Annotated[int, Tag("<number>"), Field(ge=1, le=65535)] | Annotated[str, Tag("<text>")],
    Discriminator(_number_or_text),
]
Ports = Annotated[
    Annotated[str, Tag("<one>")] | Annotated[list[PortItem], Tag("<list>")],
    Discriminator(_one_or_list),
]
# A command-line word or an environment value: text, or a whole number written plainly
# (`[httpd, -p, 80]`, `PORT: 8080`), which is passed as its decimal digits.
Word = Annotated[
    Annotated[int, Tag("<number>")] | Annotated[str, Tag("<text>")],
    Discriminator(_number_or_text),
]
Command = Annotated[
    Annotated[str, Tag("<one>")] | Annotated[list[Word], Tag("<list>")],
    Discriminator(_one_or_list),
]
User = Annotated[
    Annotated[int, Tag("<number>")] | Annotated[str, Tag("<text>")],
    Discriminator(_number_or_text),
]
_COMMAND_DOC = (
    "A list of words, or one line split as a shell would (quotes, backslashes); no shell runs it."
)
_COMMAND_EXAMPLES: list[Any] = ["python3 -m http.server 8080", ["httpd", "-f", "-p", "80"]]
RuleProto = Literal["tcp", "udp", "icmp", "icmpv6", "any"]
_PORTS_DOC = 'A range "A-B", or a list of ports and ranges.'
_PORTS_EXAMPLES: list[Any] = ["5000-5100", [80, 443, "8000-8080"]]


class RawReady(_Strict):
    """When a program counts as started: once the host listens on these sockets."""

    model_config = ConfigDict(title="Ready")

    listen: Names = Field(
        description="A socket, or a list of them, as tcp/PORT or udp/PORT: TCP listening, "
        "UDP bound (seen through sock_diag, by any process of the host).",
        examples=["tcp/8080", ["tcp/8080", "udp/53"]],
    )
    timeout: float = Field(
        READY_TIMEOUT,
        gt=0,
        le=READY_TIMEOUT_MAX,
        description="Seconds to wait for all of them; then bring-up fails.",
        examples=[5],
    )


class RawProgram(_Strict):
    """A process of the user's, started in the host when the lab comes up."""

    model_config = ConfigDict(title="Program")

    name: str = Field(
        description="Name of the program, unique in the host (`main` is reserved).",
        examples=["web"],
        json_schema_extra=_name_rule(PROGRAM_NAME_MAX),
    )
    command: Command = Field(description=_COMMAND_DOC, examples=_COMMAND_EXAMPLES)
    user: User | None = Field(
        None,
        description="User name or uid to run as; not given: root on netns hosts, the "
        "image's user on docker hosts.",
        examples=["nobody", 65534],
        json_schema_extra=_optional(),
    )
    env: dict[str, Word] = Field(
        default_factory=dict,
        description="Environment variables set for the program.",
        examples=[{"PORT": "8080"}],
        json_schema_extra={"propertyNames": {"pattern": ENV_NAME_PATTERN}},
    )
    cwd: str | None = Field(
        None,
        description="Absolute working directory; not given: the backend's default (the "
        "image's workdir on docker hosts).",
        examples=["/srv/www"],
        json_schema_extra=_optional({"pattern": "^/"}),
    )
    ready: RawReady | None = Field(
        None,
        description="Wait until the program listens before going on; not given: it is "
        "started and not waited for.",
        examples=[{"listen": "tcp/8080"}, {"listen": ["tcp/8080", "udp/53"], "timeout": 5}],
        json_schema_extra=_optional(),
    )


class RawRule(_Strict):
    """One firewall rule: exactly one of allow, reject or drop, and what it matches."""

    model_config = ConfigDict(title="Rule")

    allow: RuleProto | None = Field(
        None, description="Accept this protocol.", json_schema_extra=_optional()
    )
    reject: RuleProto | None = Field(
        None,
        description="Refuse with an answer (closed): TCP reset, or ICMP (see `with`).",
        json_schema_extra=_optional(),
    )
    drop: RuleProto | None = Field(
        None, description="Drop silently (filtered).", json_schema_extra=_optional()
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="One port.", examples=[443], json_schema_extra=_optional()
    )
    ports: Ports | None = Field(
        None, description=_PORTS_DOC, examples=_PORTS_EXAMPLES, json_schema_extra=_optional()
    )
    from_: Names | None = Field(
        None,
        alias="from",
        description="Source: a CIDR, a network name, a host name, or a list of them.",
        examples=["10.10.0.0/24", "admin", ["web", "app"]],
        json_schema_extra=_optional(),
    )
    to: Names | None = Field(
        None,
        description="Destination: a CIDR, a network name, a host name, or a list of them.",
        examples=["10.20.0.0/24", "db"],
        json_schema_extra=_optional(),
    )
    with_: Literal["reset", "port-unreachable", "admin-prohibited", "host-unreachable"] | None = (
        Field(
            None,
            alias="with",
            description="How a reject answers (reject only; reset is TCP only).",
            json_schema_extra=_optional(),
        )
    )
    family: Literal[4, 6] | None = Field(
        None, description="Only IPv4 or only IPv6.", json_schema_extra=_optional()
    )


class RawChain(_Strict):
    """One hook of the host's firewall."""

    model_config = ConfigDict(title="Chain")

    policy: Literal["accept", "drop"] = Field(
        "accept", description="What happens to packets no rule decides."
    )
    rules: list[RawRule] = Field(
        default_factory=list,
        description="Rules, first match wins.",
        examples=[[{"allow": "tcp", "port": 443}]],
    )
    stateful: bool = Field(
        True,
        description="Accept established and related packets and drop invalid ones first.",
    )


class RawFirewall(_Strict):
    """The host's packet filter (nftables, table `inet netharness`)."""

    model_config = ConfigDict(title="Firewall")

    input: RawChain | None = Field(
        None, description="Packets to this host.", json_schema_extra=_optional()
    )
    output: RawChain | None = Field(
        None, description="Packets from this host.", json_schema_extra=_optional()
    )
    forward: RawChain | None = Field(
        None,
        description="Packets routed through this host (needs forwarding: true).",
        json_schema_extra=_optional(),
    )


class RawExpectation(_Strict):
    """What a probe from some hosts to others must see; lists expand to one check each."""

    model_config = ConfigDict(title="Expectation")

    from_: Names = Field(
        alias="from", description="Source host, or a list of hosts.", examples=["client1"]
    )
    to: Names = Field(description="Target host, or a list of hosts.", examples=["web"])
    proto: Literal["tcp", "udp"] = Field(description="Transport protocol.", examples=["tcp"])
    port: int | None = Field(
        None, ge=1, le=65535, description="One port.", examples=[443], json_schema_extra=_optional()
    )
    ports: Ports | None = Field(
        None, description=_PORTS_DOC, examples=_PORTS_EXAMPLES, json_schema_extra=_optional()
    )
    state: Literal["open", "closed", "filtered", "open|filtered"] = Field(
        description="What the probe must see (open|filtered: UDP only).", examples=["open"]
    )
    family: Literal[4, 6] = Field(4, description="Probe over IPv4 or IPv6.")
    address: str | None = Field(
        None,
        description="The target's address to probe; not given: its address on a network "
        "shared with the source, else its first.",
        examples=["10.0.2.12"],
        json_schema_extra=_optional(),
    )
    owner: str | None = Field(
        None,
        description="The process that must accept the connection on every target: a "
        "`run:` program, or `main` for a docker host (state open only).",
        examples=["web"],
        json_schema_extra=_optional(_name_rule(PROGRAM_NAME_MAX)),
    )


class RawSsh(_Strict):
    """An existing machine reached over SSH; netharness creates nothing on it but a
    temporary directory for its agent."""

    model_config = ConfigDict(title="Ssh")

    address: str = Field(
        description="Host name or IP address to connect to.",
        examples=["10.0.5.11", "lab-a.example.net"],
    )
    port: int = Field(22, ge=1, le=65535, description="SSH port.", examples=[22])
    user: str | None = Field(
        None,
        description="User to log in as; defaults to the controller's user name.",
        examples=["tester"],
        json_schema_extra=_optional(),
    )
    key: str | None = Field(
        None,
        description="Private key file (relative paths: to the topology file; ~ expands). "
        "Not given: ssh-agent and ~/.ssh/id_*.",
        examples=["~/.ssh/id_ed25519"],
        json_schema_extra=_optional(),
    )
    known_hosts: str | None = Field(
        None,
        description="known_hosts file to check the host key against, besides ~/.ssh/known_hosts.",
        examples=["known_hosts"],
        json_schema_extra=_optional(),
    )


class RawHost(_Strict):
    """A host: a network namespace (or container) with interfaces on networks."""

    model_config = ConfigDict(title="Host")

    networks: dict[str, AttachmentValue] = Field(
        default_factory=dict,
        description="Networks this host is on. Each value is an IPv4 or IPv6 address, "
        "`auto` (or empty), or a mapping with address, address6 and ifname. "
        "No networks: an isolated host.",
        examples=[{"lan": "10.0.1.11"}, {"lan": "auto"}, {"lan": {"address": "10.0.1.11"}}],
    )
    routes: list[RawRoute] = Field(
        default_factory=list,
        description="Static routes.",
        examples=[[{"to": "default", "via": "10.0.1.1"}]],
    )
    forwarding: bool = Field(
        False, description="Forward IPv4 and IPv6 packets between interfaces (a router)."
    )
    sysctls: dict[str, SysctlValue] = Field(
        default_factory=dict,
        description="Per-namespace sysctls from a fixed safe set; see docs/topology.md.",
        examples=[{"net.ipv4.ip_local_port_range": "40000 40009"}],
        json_schema_extra={"propertyNames": {"enum": list(SYSCTLS)}},
    )
    backend: str = Field(
        DEFAULT_BACKEND,
        description="How the host is made: `netns` (a network namespace), `docker` "
        "(a container) or `ssh` (an existing machine; implied by an `ssh:` block).",
        examples=[DEFAULT_BACKEND],
        json_schema_extra={"enum": list(BACKEND_NAMES)},
    )
    services: list[RawService] = Field(
        default_factory=list,
        description="Listeners opened when the lab comes up.",
        examples=[[{"proto": "tcp", "port": 443}]],
    )
    nft: str | None = Field(
        None,
        description="Raw nftables script, applied with `nft -f` inside the host's namespace "
        "when the lab comes up (from the controller: images need no nft).",
        examples=[
            "table ip nat { chain post { type nat hook postrouting priority srcnat; "
            'oifname "wan" masquerade; } }'
        ],
    )
    image: str | None = Field(
        None,
        description="Docker hosts only: any local image, run as `docker run` would "
        "(default: netharness/host:<version>, made by `netharness image build`).",
        examples=["netharness/host:0.1.0"],
        json_schema_extra=_optional({"pattern": r"^\S+$"}),
    )
    firewall: RawFirewall | None = Field(
        None,
        description="Packet filter policy, compiled to nftables and applied inside the "
        "host before `nft`.",
        examples=[{"input": {"policy": "drop", "rules": [{"allow": "tcp", "port": 443}]}}],
        json_schema_extra=_optional(),
    )
    ssh: RawSsh | None = Field(
        None,
        description="An existing machine reached over SSH instead of a namespace made "
        "here; its networks list the addresses it already has.",
        examples=[{"address": "10.0.5.11", "user": "tester", "known_hosts": "known_hosts"}],
        json_schema_extra=_optional(),
    )
    run: list[RawProgram] = Field(
        default_factory=list,
        description="Processes of yours started in the host, in this order, once its "
        "networks, routes, sysctls, firewall and services are up (netns and docker hosts).",
        examples=[[{"name": "web", "command": "python3 -m http.server 8080"}]],
    )
    command: Command | None = Field(
        None,
        description="Docker hosts only: replaces the image's CMD (the ENTRYPOINT stays). "
        + _COMMAND_DOC,
        examples=_COMMAND_EXAMPLES,
        json_schema_extra=_optional(),
    )


class RawTopology(_Strict):
    """A netharness topology: networks, and hosts attached to them."""

    model_config = ConfigDict(title="netharness topology")

    name: str = Field(
        description="Name of the topology.",
        examples=["routed"],
        json_schema_extra=_name_rule(TOPOLOGY_NAME_MAX),
    )
    networks: dict[str, RawNetwork] = Field(
        default_factory=dict,
        description="Networks by name; a name is also the default interface name in hosts.",
        examples=[{"lan": {"subnet": "10.0.1.0/24", "subnet6": "fd00:1::/64"}}],
        json_schema_extra={"propertyNames": _name_rule(IFNAME_MAX)},
    )
    hosts: dict[str, RawHost] = Field(
        description="Hosts by name, at least one.",
        examples=[{"h1": {"networks": {"lan": "auto"}}}],
        json_schema_extra={"propertyNames": _name_rule(HOST_NAME_MAX), "minProperties": 1},
    )
    expect: list[RawExpectation] = Field(
        default_factory=list,
        description="Reachability the lab must show: `netharness check` and pytest probe "
        "each entry.",
        examples=[[{"from": "h1", "to": "h2", "proto": "tcp", "port": 443, "state": "open"}]],
    )
