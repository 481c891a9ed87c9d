"""Checks of the user's processes: a host's `run:` programs and a docker host's `command:`,
and of the names that refer to them (a service's `process:`, an expectation's `owner:`).

A program name is looked up among every name written under the host's `run:`, even of
an entry cut for a problem reported already, so that a reference to it is not reported
as unknown as well.
"""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from harness.topology._paths import Path
from harness.topology._raw import (
    ENV_NAME_PATTERN,
    PROGRAM_NAME_MAX,
    READY_TIMEOUT,
    RawProgram,
    RawReady,
)
from harness.topology.model import BACKEND_NAMES, DEFAULT_BACKEND, MAIN_PROCESS, Program, Ready

if TYPE_CHECKING:
    from harness.topology._checks import Checker, _Host

#: The name of a docker host's own process (the image's entrypoint and cmd).
MAIN = MAIN_PROCESS
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no user" to the kernel
USER_NAME_MAX = 32  # what useradd accepts
_ENV_NAME = re.compile(ENV_NAME_PATTERN)
_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
_SOCKET = re.compile(r"^(tcp|udp)/([0-9]+)$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# What a shell reads as syntax; without a shell it reaches the program in its arguments.
_SHELL_CHARS = ";&|<>`"
_EXPANSION = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|[{(])")


@dataclass(frozen=True)
class Runs:
    """What a host runs, and which process names may refer to it."""

    programs: tuple[Program, ...] = ()
    command: tuple[str, ...] | None = None
    names: frozenset[str] | None = frozenset()  # None: not known (reported already)
    docker: bool | None = False  # whether it has a `main`; None: its backend is unknown
    ssh: bool = False  # an existing machine: netharness starts nothing there


def check_runs(checker: Checker, host: _Host) -> Runs:
    """Check the host's `run:` and `command:`; what it runs (complete only if no problem)."""
    backend = _backend(checker, host)
    base: Path = ("hosts", host.name)
    command = None
    if host.raw.command is not None:
        command = _host_command(checker, base, host.raw.command, backend)
    written = checker.doc.data["hosts"].get(host.name)
    names = _written_names(written.get("run") if isinstance(written, dict) else None)
    if host.ssh:  # `run:` on an ssh host is refused with the other keys (see _ssh)
        return Runs(command=command, names=None if host.raw.run else frozenset(), ssh=True)
    indices = checker.damage.indices((*base, "run"), len(host.raw.run))
    seen: dict[str, int] = {}
    programs = []
    for index, raw in zip(indices, host.raw.run, strict=True):
        program = _program(checker, (*base, "run", index), raw, seen)
        if program is not None:
            programs.append(program)
    docker = None if backend is None else backend == "docker"
    return Runs(tuple(programs), command, names, docker)


def _none_on_ssh(host: str) -> tuple[str, str]:
    message = f"{host} is an existing machine reached over SSH: netharness starts no programs there"
    return message, "remove it: only lab hosts have programs to name"


def unknown_process(runs: Runs, host: str, name: str) -> tuple[str, str] | None:
    """(message, fix) if `name` is no process of the host; None if it is, or is unknown."""
    if runs.ssh:  # its `run:`, if any, is reported already
        return None if runs.names is None else _none_on_ssh(host)
    programs = sorted(runs.names or ())
    if name == MAIN:
        if runs.docker is not False:
            return None
        fix = "add `backend: docker` to the host, or start the server under `run:`"
        if programs:
            fix += f" and name it (its programs: {', '.join(programs)})"
        return f"{MAIN} is a docker host's own main process, and {host} is not a docker host", fix
    if runs.names is None or name in runs.names:
        return None
    if runs.docker:
        programs.append(MAIN)
    if not programs:
        return f"{host} runs no program {name!r}", f"add it under {host}'s `run:`"
    close = difflib.get_close_matches(name, programs, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{host} runs no program {name!r}", f"{hint}its programs: {', '.join(programs)}"


# -- one program ---------------------------------------------------------------------------


def _program(checker: Checker, path: Path, raw: RawProgram, seen: dict[str, int]) -> Program | None:
    ok = _name(checker, (*path, "name"), raw.name, seen, path[-1])
    argv = check_command(checker, (*path, "command"), raw.command)
    user = None if raw.user is None else _user(checker, (*path, "user"), raw.user)
    env = _env(checker, (*path, "env"), raw.env)
    cwd_ok = raw.cwd is None or _cwd(checker, (*path, "cwd"), raw.cwd)
    ready = _ready(checker, (*path, "ready"), raw.ready) if raw.ready else ()
    user_ok = raw.user is None or user is not None
    if not ok or argv is None or not user_ok or env is None or not cwd_ok or ready is None:
        return None
    return Program(
        raw.name,
        argv,
        user,
        MappingProxyType(env),
        raw.cwd,
        ready,
        raw.ready.timeout if raw.ready else READY_TIMEOUT,
    )


def _name(checker: Checker, path: Path, name: str, seen: dict[str, int], index: Any) -> bool:
    if not checker.check_name(path, name, "program", PROGRAM_NAME_MAX):
        return False
    if name == MAIN:
        checker.problem(
            path,
            f"program name {MAIN!r} is reserved: it names a docker host's own main process",
            "choose another name",
        )
        return False
    if name in seen:
        checker.problem(
            path,
            f"program name {name!r} is already used in this host (run[{seen[name]}])",
            "give every program of a host its own name",
        )
        return False
    seen[name] = index
    return True


def check_command(
    checker: Checker, path: Path, command: str | list[int | str]
) -> tuple[str, ...] | None:
    """The words of a command (a list, or a line split as a shell would); None if bad."""
    if isinstance(command, str):
        words = _split(checker, path, command)
        if words is None:
            return None
    else:
        words = [str(word) for word in command]
    example = "e.g. `command: httpd -f -p 80` or `command: [httpd, -f, -p, '80']`"
    if not words:
        checker.problem(
            path, "the command is empty", f"write the program and its arguments, {example}"
        )
        return None
    if not words[0]:
        checker.problem(path, "the command's program (its first word) is empty", example)
        return None
    if any("\0" in word for word in words):
        checker.problem(
            path, "the command contains a NUL character, which no argument can hold", "remove it"
        )
        return None
    return tuple(words)


def _split(checker: Checker, path: Path, line: str) -> list[str] | None:
    """`line` split into words as a shell would, refusing what only a shell would do."""
    as_list = "or write the command as a list: [program, arg, ...]"
    try:
        words = shlex.split(line)
    except ValueError:
        _, quote = _scan(line)
        if quote is None:
            checker.problem(
                path, "the command ends with a \\ that escapes nothing", f"remove it, {as_list}"
            )
        else:
            char, at = quote
            checker.problem(
                path,
                f"the {char} at character {at + 1} of the command is never closed",
                f"close it, or escape it as \\{char}, {as_list}",
            )
        return None
    syntax = _shell_syntax(line)
    no_shell = "no shell runs the command"
    if syntax is not None:
        checker.problem(
            path,
            f"{no_shell}: the {syntax[0]} at character {syntax[1] + 1} would reach "
            f"{words[0]} in an argument",
            f"to run it through a shell, write [sh, -c, {line!r}]; to pass it as it is, "
            "write the command as a list",
        )
        return None
    if words and _ASSIGNMENT.match(words[0]):
        variable, _, value = words[0].partition("=")
        checker.problem(
            path,
            f"{no_shell}: {words[0]!r} would be taken as the program, not as a variable",
            f"set it under the program's env: `env: {{{variable}: {value!r}}}`",
        )
        return None
    return words


def _shell_syntax(line: str) -> tuple[str, int] | None:
    """The first unquoted, unescaped `;`, `&`, `|`, `<`, `>` (with those that follow it),
    backquote or `$NAME`, `${`, `$(` of `line`, which a shell would read as syntax or
    expand, and its index."""
    bare, _ = _scan(line)
    for index in sorted(bare):
        expansion = _EXPANSION.match(line, index)
        if expansion:
            return expansion.group(0), index
        if line[index] in _SHELL_CHARS:
            end = index
            while end + 1 in bare and line[end + 1] in _SHELL_CHARS:
                end += 1
            return line[index : end + 1], index
    return None


def _scan(line: str) -> tuple[set[int], tuple[str, int] | None]:
    """Where `line` has characters outside quotes and not escaped, as `shlex.split` reads
    it; and the quote left open at its end, with its index."""
    bare: set[int] = set()
    quote: str | None = None
    start = index = 0
    while index < len(line):
        char = line[index]
        if char == "\\" and quote != "'":
            index += 2  # an escaped character: in double quotes or outside any quotes
            continue
        if quote is None and char in "'\"":
            quote, start = char, index
        elif quote is None:
            bare.add(index)
        elif char == quote:
            quote = None
        index += 1
    return bare, (quote, start) if quote else None


def _user(checker: Checker, path: Path, user: int | str) -> str | None:
    """The user as text; None if reported bad."""
    if isinstance(user, int):
        if 0 <= user <= MAX_UID:
            return str(user)
        checker.problem(path, f"uid {user} is out of range", f"use a uid from 0 to {MAX_UID}")
        return None
    if ":" in user:
        name = user.partition(":")[0] or "nobody"
        checker.problem(
            path, f"user {user!r} names a group too", f"write the user alone, e.g. `user: {name}`"
        )
        return None
    if not (_USER_NAME.match(user) or user.isdigit()) or len(user) > USER_NAME_MAX:
        checker.problem(
            path,
            f"{user!r} is not a user name or uid",
            f"write a user name (letters, digits, _ . -, at most {USER_NAME_MAX}) or a uid, "
            "e.g. nobody or 65534",
        )
        return None
    return user


def _env(checker: Checker, path: Path, env: dict[str, int | str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    ok = True
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            better = re.sub(r"[^A-Za-z0-9_]+", "_", key)
            better = f"_{better}" if better[:1].isdigit() else better or "NAME"
            checker.problem(
                (*path, key),
                f"{key!r} is not an environment variable name",
                f"use letters, digits and _, not starting with a digit, e.g. {better!r}",
                at_key=True,
            )
            ok = False
        elif isinstance(value, str) and "\0" in value:
            checker.problem((*path, key), "the value contains a NUL character", "remove it")
            ok = False
        else:
            out[key] = str(value)
    return out if ok else None


def _cwd(checker: Checker, path: Path, cwd: str) -> bool:
    if not cwd.startswith("/"):
        checker.problem(
            path, f"cwd {cwd!r} is not an absolute path", f"start it at /, e.g. /{cwd.lstrip('./')}"
        )
        return False
    if "\0" in cwd:
        checker.problem(path, "cwd contains a NUL character", "remove it")
        return False
    return True


def _ready(checker: Checker, path: Path, ready: RawReady) -> tuple[Ready, ...] | None:
    where = (*path, "listen")
    items = ready.listen if isinstance(ready.listen, list) else [ready.listen]
    if not items:
        checker.problem(where, "listen lists no socket", "name at least one, e.g. tcp/8080")
        return None
    sockets: list[Ready] = []
    for index, text in enumerate(items):
        at = (*where, index) if isinstance(ready.listen, list) else where
        socket = _socket(checker, at, text)
        if socket is None:
            return None
        if socket in sockets:
            checker.problem(at, f"{text} is listed twice", "list each socket once")
            return None
        sockets.append(socket)
    return tuple(sockets)


def _socket(checker: Checker, path: Path, text: str) -> Ready | None:
    match = _SOCKET.match(text.lower())
    if text.isdigit():
        checker.problem(path, f"{text} has no protocol", f"write tcp/{text} or udp/{text}")
        return None
    if match is None:
        checker.problem(
            path,
            f"{text!r} is not a socket to wait for",
            "write tcp/PORT or udp/PORT, e.g. tcp/8080",
        )
        return None
    if match.group(0) != text:
        checker.problem(path, f"{text!r} is not written in lowercase", f"write {text.lower()}")
        return None
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        checker.problem(path, f"port {port} is out of range", "use a port from 1 to 65535")
        return None
    return Ready("tcp" if match.group(1) == "tcp" else "udp", port)


# -- a docker host's command ---------------------------------------------------------------


def _host_command(
    checker: Checker, base: Path, command: str | list[int | str], backend: str | None
) -> tuple[str, ...] | None:
    path = (*base, "command")
    if backend is None or backend == "docker":
        return check_command(checker, path, command)
    fix = (
        "remove command: netharness starts nothing on an existing machine"
        if backend == "ssh"
        else "add `backend: docker` to the host, or start the program with `run:`"
    )
    checker.problem(
        path,
        f"command replaces a docker image's CMD, and this host's backend is {backend}",
        fix,
    )
    return None


def _backend(checker: Checker, host: _Host) -> str | None:
    """The host's backend as the file says; None if that is unknown (reported already)."""
    if host.ssh:
        return "ssh"
    written = checker.doc.data["hosts"].get(host.name)
    backend = written.get("backend", DEFAULT_BACKEND) if isinstance(written, dict) else None
    if backend != host.raw.backend or backend not in BACKEND_NAMES:
        return None  # cut for its type, or an unknown name
    return host.raw.backend


def _written_names(run: Any) -> frozenset[str] | None:
    """Every program name written under `run:`; None if one of them is not even text."""
    if not isinstance(run, list):
        return None if run is not None else frozenset()
    names = [item.get("name") if isinstance(item, dict) else None for item in run]
    text = [name for name in names if isinstance(name, str)]
    return frozenset(text) if len(text) == len(names) else None
