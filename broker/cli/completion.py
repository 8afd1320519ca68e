"""Shell completion: `broker completion bash|zsh|fish` prints a script; the script asks
``broker __complete WORD...`` (the last word: the one being completed) for candidates.

``__complete`` is answered by the fast path (:mod:`broker.cli.fast`) without typer,
click, rich or grpcio: commands and options come from :data:`broker.cli.cli_tree.TREE`
(generated from the typer app by :mod:`broker.cli.completion_tree`;
``tests/test_cli_completion.py`` holds the two equal), connector names from the
running daemon over :mod:`broker.cli.wire`.
Nothing is printed when the daemon does not answer: a completion never shows an error.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

#: Arguments and options whose values the daemon knows: connector names or types.
ASKED = {
    "name": "connectors",
    "connector": "connectors",
    "--name": "connectors",
    "connector_type": "types",
    "--type": "types",
    "-t": "types",
    "--connector-type": "types",
}
#: The bound on the daemon's answer: a completion must not hang a shell.
TIMEOUT = 2.0


class Shell(enum.StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


BASH = """\
# broker completion (bash): eval "$(broker completion bash)", e.g. in ~/.bashrc
_broker_completion() {
    local IFS=$'\\n'
    COMPREPLY=($(broker __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
}
complete -o default -F _broker_completion broker
"""

ZSH = """\
#compdef broker
# broker completion (zsh): broker completion zsh > "${fpath[1]}/_broker",
# or source <(broker completion zsh) after compinit
_broker() {
    local -a items
    items=(${(f)"$(broker __complete "${(@)words[2,CURRENT]}" 2>/dev/null)"})
    compadd -a items
}
if [ "$funcstack[1]" = "_broker" ]; then
    _broker "$@"
else
    compdef _broker broker
fi
"""

FISH = """\
# broker completion (fish): broker completion fish > ~/.config/fish/completions/broker.fish
function __broker_complete
    set -l tokens (commandline -opc)
    broker __complete $tokens[2..-1] (commandline -ct) 2>/dev/null
end
complete -c broker -f -a '(__broker_complete)'
"""

SCRIPTS = {Shell.bash: BASH, Shell.zsh: ZSH, Shell.fish: FISH}


def print_script(shell: Shell, output: Any) -> None:
    """The script for ``shell``; as ``{"shell", "script"}`` for --output json / yaml."""
    from broker.cli.shapes import Output, print_data

    script = SCRIPTS[Shell(shell)]
    if Output(output) is Output.table:
        sys.stdout.write(script)
    else:
        print_data(Output(output), {"shell": str(shell), "script": script})


# -- the tree ---------------------------------------------------------------------------

#: One command or group: subcommands, options (flag -> its value's choices, None for a
#: flag taking no value, () for a free value), argument names in order.
Node = tuple[tuple[str, ...], dict[str, tuple[str, ...] | None], tuple[str, ...]]


# -- answering --------------------------------------------------------------------------


def candidates(words: Sequence[str], ask: Callable[[str], list[str]]) -> list[str]:
    """What may follow ``words[:-1]`` and start with ``words[-1]``; ``ask("connectors")``
    / ``ask("types")`` gives the daemon's connector names / types (asked only when
    wanted)."""
    from broker.cli.cli_tree import TREE

    *before, current = words or [""]
    path: list[str] = []
    position = 0
    pending: str | None = None  # an option still waiting for its value
    for word in before:
        subcommands, options, _ = TREE[" ".join(path)]
        if pending is not None:
            pending = None
        elif word in subcommands and not position:
            path.append(word)
        elif word.startswith("-") and word != "-":
            if "=" not in word and options.get(word, None) is not None:
                pending = word
        else:
            position += 1
    subcommands, options, arguments = TREE[" ".join(path)]
    argument = arguments[position] if position < len(arguments) else None
    if pending is not None:
        wanted = ask(ASKED[pending]) if pending in ASKED else list(options[pending] or ())
    elif current.startswith("-"):
        wanted = list(options)
    elif subcommands:
        wanted = list(subcommands)
    elif argument == "shell":
        wanted = [str(shell) for shell in Shell]
    elif argument in ASKED:
        wanted = ask(ASKED[argument])
    else:
        wanted = []
    return [w for w in wanted if w.startswith(current)]


def _socket(words: Sequence[str]) -> Path | None:
    """The --socket given on the line being completed, if any."""
    from pathlib import Path

    for index, word in enumerate(words[:-1]):
        if word == "--socket" and index + 1 < len(words) - 1:
            return Path(words[index + 1])
        if word.startswith("--socket="):
            return Path(word.partition("=")[2])
    return None


def from_daemon(socket: Path | None, what: str) -> list[str]:
    """The daemon's connector names (those the caller may view) or connector types, []
    when it does not answer: over broker.cli.wire, bounded by :data:`TIMEOUT`."""
    import os

    from broker.api.v1 import broker_pb2 as pb
    from broker.cli import locate, wire

    os.environ.setdefault(locate.CONNECT_TIMEOUT_ENV, str(TIMEOUT))
    names: list[str] = []
    request = pb.ListConnectorsRequest()
    try:
        with wire.connection(socket) as conn:
            stub = wire.Stub(conn, pb.DESCRIPTOR.services_by_name["BrokerService"], pb)
            if what == "types":
                reply = stub.ListConnectorTypes(pb.ListConnectorTypesRequest(), timeout=TIMEOUT)
                return sorted(t.connector_type for t in reply.connector_types)
            while True:
                reply = stub.ListConnectors(request, timeout=TIMEOUT)
                names.extend(c.name for c in reply.connectors)
                if not reply.next_page_token:
                    return sorted(names)
                request.page_token = reply.next_page_token
    except Exception:  # no daemon, no rights, old daemon: nothing to offer
        return []


def run(words: Sequence[str]) -> None:
    """``broker __complete WORD...``: one candidate a line."""
    for word in candidates(words, lambda what: from_daemon(_socket(words), what)):
        sys.stdout.write(word + "\n")
