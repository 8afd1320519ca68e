"""`--help` as a man page reads: names for every value, help for every option, examples.

typer declares the commands; :func:`polish` goes over the click command tree it builds
once, before parsing: plain (click) help instead of rich boxes, ``NAME`` / ``KEY=VALUE``
placeholders instead of typer's ``{name}`` / ``<list[str]>``, the help of options that
recur across commands (``--resource-type`` ...) written once here, and each command's
examples as its epilog. ``tests/test_cli_tree.py`` checks that every option has help
and every command an example.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument

#: Help for options that mean the same on every command that takes them.
OPTION_HELP = {
    "--auth-method": "Auth method of the connector type (`broker connector describe-type TYPE`)",
    "--resource-type": "Resource type, e.g. docker-registry, aws-generic, kubernetes-cluster "
    "[default: the connector's, or the connector type's only one]",
    "--resource-id": "Resource ID, e.g. a registry host, a bucket, a cluster name "
    "[default: the connector's]",
    "--expiration-seconds": "Lifetime of each minted credential, in seconds "
    "[default: the auth method's]",
    "--expires-at": "When the stored credential expires: RFC 3339 or +12h",
    "--description": "Free text shown by describe",
    "--name": "Only the connector with this name",
    "--type": "Connector type: aws, gcp, kubernetes, docker, azure (`broker connector list-types`)",
    "--connector-type": "Only connectors of this type",
    "--show-secrets": "Show secret attributes instead of [HIDDEN] (needs show-secrets rights)",
    "--remove-attr": "Remove this attribute (repeatable)",
    "--remove-label": "Remove this label key (repeatable)",
    "--no-verify": "Store without checking the credentials upstream",
    "--kubeconfig": "kubeconfig file to edit [default: KUBECONFIG's first file, ~/.kube/config]",
    "--profile": "AWS profile name [default: the connector's name]",
    "--config": "TOML config file",
    "--data-dir": "Directory of the store, key and sockets [default: BROKER_DATA_DIR, ./.broker]",
    "--socket": "The daemon's Unix socket",
    "--tls-cert": "PEM certificate for --tcp",
    "--tls-key": "PEM private key for --tcp",
    "--tls-client-ca": "PEM CA bundle client certificates must chain to (mutual TLS)",
    "--log-level": "debug, info, warning or error",
    "--full": "Show PEM values (CA bundles) whole, not as fingerprint and subject",
}

#: Placeholders for values, by option (default: the parameter's name in capitals).
METAVARS = {
    "--type": "TYPE",
    "--connector-type": "TYPE",
    "--auth-method": "METHOD",
    "--resource-type": "RTYPE",
    "--resource-id": "ID",
    "--label": "K=V",
    "--socket": "PATH",
    "--config": "PATH",
    "--data-dir": "DIR",
    "--kubeconfig": "PATH",
    "--expiration-seconds": "SECONDS",
    "--timeout": "SECONDS",
    "--expires-at": "TIME",
    "--remove-attr": "KEY",
    "--remove-label": "KEY",
    "--tcp": "HOST:PORT",
    "--metrics": "HOST:PORT",
    "--ttl": "DURATION",
    "--from": "STORE",
    "--to": "STORE",
    "--new-key-file": "PATH",
    "--tls-cert": "PATH",
    "--tls-key": "PATH",
    "--tls-client-ca": "PATH",
    "--selector": "SELECTOR",
    "--stop-signal": "SIGNAL",
    "--log-level": "LEVEL",
    "--log-format": "FORMAT",
    "--expected-revision": "REVISION",
    "--bind-uid": "UID",
    "--cert-id": "ID",
    "--description": "TEXT",
}

#: Placeholders for positional arguments, by parameter name.
ARGUMENTS = {"attributes": "KEY=VALUE", "grant_id": "ID", "connector_type": "TYPE"}

#: Examples per command path (" "-joined); the root's under "".
EXAMPLES: dict[str, list[str]] = {
    "": ["broker serve &", "broker status", "broker connector list -o json"],
    "serve": ["broker serve --data-dir ~/.local/share/broker", "broker serve -c /etc/broker.toml"],
    "health": ["broker health --strict && echo ready"],
    "status": ["broker status", "broker status -o yaml"],
    "version": ["broker version", "broker --version"],
    "whoami": ["broker whoami -o json"],
    "completion": [
        'eval "$(broker completion bash)"   # in ~/.bashrc',
        "broker completion zsh > ~/.zfunc/_broker",
        "broker completion fish > ~/.config/fish/completions/broker.fish",
    ],
    "connector": ["broker connector list", "broker connector describe my-registry"],
    "connector list-types": ["broker connector list-types", "broker connector list-types -t aws"],
    "connector describe-type": [
        "broker connector describe-type aws",
        "broker connector describe-type aws --auth-method access-key",
    ],
    "connector register": [
        'printf %s "$PASSWORD" | broker connector register my-registry --type docker '
        "registry=registry.example.com username=ci password=-",
        "broker connector register my-aws --type aws --auth-method access-key "
        "aws_access_key_id=AKIA... aws_secret_access_key=@/run/secrets/aws-key region=eu-west-1",
        "broker connector register my-cluster --type kubernetes --auto-configure --context prod",
    ],
    "connector list": [
        "broker connector list",
        "broker connector list -t docker -l team=ml -o json",
    ],
    "connector describe": [
        "broker connector describe my-registry",
        "broker connector describe my-cluster --full",
        "broker connector describe my-aws --client -r aws-generic",
    ],
    "connector update": [
        "broker connector update my-registry password=@/run/secrets/new-password",
        "broker connector update my-aws --label team=ml --remove-label old",
    ],
    "connector delete": ["broker connector delete my-registry"],
    "connector verify": [
        "broker connector verify my-aws",
        "broker connector verify my-aws -o json",
    ],
    "connector list-resources": [
        "broker connector list-resources",
        "broker connector list-resources -t aws -r s3-bucket --exclude-errors -o json",
    ],
    "credentials": ["broker credentials get my-registry"],
    "credentials get": [
        "broker credentials get my-registry",
        "broker credentials get my-aws -r s3-bucket -i my-bucket -o json",
    ],
    "credentials watch": ["broker credentials watch my-aws -o json"],
    "credentials rotate": ["broker credentials rotate my-gcp -o json"],
    "login": ["broker login docker my-registry"],
    "login docker": [
        "broker login docker my-registry",
        "broker login docker my-registry --install-helper ~/.local/bin",
    ],
    "login kubernetes": [
        "broker login kubernetes my-cluster",
        "broker login kubernetes my-cluster --no-set-current",
    ],
    "login aws": ["broker login aws my-aws --profile dev && aws --profile dev s3 ls"],
    "logout": ["broker logout docker my-registry"],
    "logout docker": ["broker logout docker my-registry"],
    "env": ['eval "$(broker env aws my-aws)"'],
    "env aws": ['eval "$(broker env aws my-aws --ttl 1h)" && aws s3 ls'],
    "env gcp": ['eval "$(broker env gcp my-gcp)" && gcloud storage ls'],
    "env list": ["broker env list", "broker env list -o json"],
    "env revoke": ["broker env revoke 3f9c2a7e"],
    "policy": ["broker policy show"],
    "policy show": ["broker policy show -o yaml"],
    "policy check": [
        "broker policy check get my-aws --user alice",
        "broker policy check manage --uid 1000 -o json",
    ],
    "store": ["broker store migrate --from sqlite:broker.db --to postgresql://db/broker"],
    "store migrate": [
        "broker store migrate --from sqlite:/var/lib/broker/broker.db "
        "--to 'postgresql://broker@db.internal/broker?sslmode=verify-full'",
    ],
    "outputs": ["broker outputs list"],
    "outputs list": ["broker outputs list -o json"],
    "config": ["broker config show"],
    "config show": ["broker config show", "broker config show -c /etc/broker.toml -o json"],
}


class _Argument(TyperArgument):
    """A positional argument shown as ``NAME`` (``[KEY=VALUE]...`` when optional and
    repeated), not typer's ``{name}`` / ``<list[str]>``."""

    def _shown(self) -> str:
        return self.metavar or (self.name or "").upper()

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self._shown()
        if not self.required:
            name = f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]

    def _rich_display_name(self) -> str:
        return self._shown() + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def choices_of(param: Any) -> tuple[str, ...]:
    """The values a parameter accepts when they are a fixed set (an enum), else ()."""
    desc = getattr(param, "type_descriptor", None)
    if desc is None or not desc.is_choice or desc.choices is None:
        return ()
    return tuple(str(getattr(c, "value", c)) for c in desc.choices)


def commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group under ``command`` with its path, the root first."""
    out = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        out.extend(commands(sub, (*path, name)))
    return out


def polish(root: Any) -> Any:
    """Apply the placeholders, shared option help and examples to typer's click tree."""
    for path, command in commands(root):
        command.rich_markup_mode = None  # click's plain help and one-line errors
        examples = EXAMPLES.get(" ".join(path))
        if examples and not command.epilog:
            command.epilog = "\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples)
        for param in command.params:
            if param.param_type_name == "argument":
                param.__class__ = _Argument
                if param.metavar is None:
                    param.metavar = ARGUMENTS.get(param.name, (param.name or "").upper())
                continue
            flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
            if not param.help:
                param.help = OPTION_HELP.get(flag)
            if param.metavar is None and not param.is_flag:
                choices = choices_of(param)
                param.metavar = (
                    "|".join(choices) if choices else METAVARS.get(flag, (param.name or "").upper())
                )
    return root
