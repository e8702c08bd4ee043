"""``byok keys …``: workspace keys and sealing, as the admin identity (BYOK_VAULT_ADDR, BYOK_VAULT_TOKEN).

    byok keys create  <workspace>
    byok keys seal    <workspace> --provider P [--base-url U]   < key      (or a hidden prompt on a TTY)
    byok keys rotate  <workspace>
    byok keys rewrap  <workspace> --provider P [--base-url U]   < sealed keys, one per line
    byok keys retire  <workspace> [--before-version N]
    byok keys status  <workspace> [--json]

A provider key is read from stdin or a hidden prompt, never from argv, and no command shows one.
Exit codes: 0 done, 1 Vault refused or failed, 2 wrong usage or input.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from pydantic import SecretStr

from schemas.models import Provider
from worker.cli.common import configured_settings
from worker.cli.parser import OneLineParser, bounded
from worker.keys.admin import KeyAdmin, KeyAdminError, KeyStatus, KeyUsageError
from worker.keys.endpoint import Endpoint, EndpointError, check_destination
from worker.settings import VaultSettings

Command = Callable[[argparse.Namespace], int]
KEYS_EPILOG = ("settings: BYOK_VAULT_ADDR, BYOK_VAULT_TOKEN (the admin identity: may seal, never decrypt), "
               "BYOK_VAULT_TRANSIT_MOUNT, BYOK_VAULT_KEY_PREFIX, BYOK_VAULT_NAMESPACE. "
               "exit codes: 0 done, 1 Vault refused or failed, 2 wrong usage or input")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = subparsers.add_parser(
        "keys",
        help="workspace transit keys: create, seal, rotate, rewrap, retire, status",
        description="Workspace keys and sealing with the admin identity (BYOK_VAULT_ADDR, BYOK_VAULT_TOKEN). "
                    "A provider key is read from stdin or a hidden prompt, never from the command line.",
        epilog=KEYS_EPILOG,
    )
    commands = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND",
                                   parser_class=_NoEchoParser)

    create = commands.add_parser(
        "create", help="create the workspace's transit key (idempotent)", epilog=KEYS_EPILOG,
        description="Creates the workspace's transit key (aes256-gcm96, derived, not exportable, not deletable); "
                    "a key that exists already is left as it is.",
    )
    _workspace(create)
    create.set_defaults(func=_create)

    seal = commands.add_parser(
        "seal", help="seal a provider key (stdin, or a hidden prompt) and print its vault:vN:… string",
        description="Reads the provider key from stdin (one trailing newline is stripped) or, on a terminal, "
                    "from a hidden prompt. Prints exactly one line: the sealed key. A key that is empty or has "
                    "whitespace around it is refused.",
        epilog=KEYS_EPILOG,
    )
    _workspace(seal)
    _endpoint(seal)
    seal.set_defaults(func=_seal)

    rotate = commands.add_parser(
        "rotate", help="new key version; keys sealed earlier keep opening", epilog=KEYS_EPILOG,
        description="Adds a version to the workspace's transit key: new seals use it, keys sealed earlier keep "
                    "opening until they are retired.",
    )
    _workspace(rotate)
    rotate.set_defaults(func=_rotate)

    rewrap = commands.add_parser(
        "rewrap", help="sealed keys on stdin (one per line) to the latest key version on stdout",
        description="Rewraps inside Vault (the plaintext never leaves it). Every line must be sealed for the "
                    "given endpoint: the binding is needed to open it. All lines or none: on any failure "
                    "nothing is printed.",
        epilog=KEYS_EPILOG,
    )
    _workspace(rewrap)
    _endpoint(rewrap)
    rewrap.set_defaults(func=_rewrap)

    retire = commands.add_parser(
        "retire", help="raise min_decryption_version: older sealed keys stop opening", epilog=KEYS_EPILOG,
        description="Raises the key's min_decryption_version (never lowers it): keys sealed with older versions "
                    "stop opening, and jobs carrying them fail with key_unavailable.",
    )
    _workspace(retire)
    retire.add_argument("--before-version", type=bounded(int, 1), metavar="N",
                        help="retire versions below N (default: the latest version)")
    retire.set_defaults(func=_retire)

    status = commands.add_parser(
        "status", help="key versions and retirement (never key material)", epilog=KEYS_EPILOG,
        description="The key's type, flags, versions and minimum decryption version; never key material.",
    )
    _workspace(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)


class _NoEchoParser(OneLineParser):
    """Refuses leftover arguments without echoing them (argparse's own error would): one may be a key."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"{len(extras)} unexpected argument(s), not shown: a provider key is never taken from "
                       "the command line (pipe it on stdin or type it at the prompt, and clear it from your "
                       "shell history)")
        return parsed, extras


def _workspace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workspace_id", metavar="WORKSPACE")


def _endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", required=True, choices=[p.value for p in Provider])
    parser.add_argument("--base-url", help="the provider's default when left out")


# -- commands -------------------------------------------------------------------------------------------


def _create(args: argparse.Namespace) -> int:
    def run(admin: KeyAdmin) -> int:
        created, status = admin.create(args.workspace_id)
        state = "created" if created else "already exists, nothing changed"
        _say(args, f"{status.name} {state} ({status.type}, derived, not exportable, latest version "
                   f"{status.latest_version})")
        return 0

    return _run(args, run)


def _seal(args: argparse.Namespace) -> int:
    def run(admin: KeyAdmin) -> int:
        endpoint = _resolve_endpoint(args, carries_key=True)
        admin.status(args.workspace_id)  # a missing key is reported before anyone types a secret
        provider_key = refuse_surrounding_whitespace(read_provider_key(
            sys.stdin, prompt=f"{endpoint.provider.value} key for workspace {args.workspace_id} (hidden): "
        ))
        sealed = admin.seal(args.workspace_id, endpoint, provider_key)
        sys.stdout.write(sealed + "\n")
        return 0

    return _run(args, run)


def _rotate(args: argparse.Namespace) -> int:
    def run(admin: KeyAdmin) -> int:
        status = admin.rotate(args.workspace_id)
        _say(args, f"{status.name} rotated: new seals use version {status.latest_version}; keys sealed with "
                   f"versions {status.min_decryption_version}..{status.latest_version - 1} still open "
                   "(rewrap them, then retire)")
        return 0

    return _run(args, run)


def _rewrap(args: argparse.Namespace) -> int:
    def run(admin: KeyAdmin) -> int:
        endpoint = _resolve_endpoint(args, carries_key=False)
        lines = [line.strip() for line in sys.stdin.read().splitlines()]
        sealed = [line for line in lines if line]
        if not sealed:
            raise KeyUsageError("no sealed keys on stdin (one vault:vN:… string per line)")
        rewrapped = admin.rewrap(args.workspace_id, endpoint, sealed)
        sys.stdout.write("".join(line + "\n" for line in rewrapped))
        _say(args, f"{len(rewrapped)} sealed key(s) rewrapped")
        return 0

    return _run(args, run)


def _retire(args: argparse.Namespace) -> int:
    def run(admin: KeyAdmin) -> int:
        previous, status = admin.retire(args.workspace_id, args.before_version)
        if previous == status.min_decryption_version:
            _say(args, f"{status.name}: versions before {previous} were already retired, nothing changed")
        else:
            _say(args, f"{status.name}: versions before {status.min_decryption_version} retired (was "
                       f"{previous}); keys sealed with them now fail with key_unavailable")
        return 0

    return _run(args, run)


def _status(args: argparse.Namespace) -> int:
    def run(admin: KeyAdmin) -> int:
        status = admin.status(args.workspace_id)
        if args.json:
            sys.stdout.write(json.dumps(status.to_json(), indent=2) + "\n")
        else:
            sys.stdout.write(format_status(status))
        return 0

    return _run(args, run)


def format_status(status: KeyStatus) -> str:
    flags = [
        "derived" if status.derived else "NOT derived",
        "exportable" if status.exportable else "not exportable",
        "plaintext backup allowed" if status.allow_plaintext_backup else "no plaintext backup",
        "deletion allowed" if status.deletion_allowed else "deletion not allowed",
    ]
    lines = [
        f"key                     {status.name}",
        f"type                    {status.type} ({', '.join(flags)})",
        f"latest_version          {status.latest_version}",
        f"min_decryption_version  {status.min_decryption_version}",
        "versions that decrypt:",
        *(f"  v{v.version:<4} created {v.created_at.isoformat().replace('+00:00', 'Z')}" for v in status.versions),
    ]
    problems = status.problems()
    if problems:
        lines.append(f"WARNING: this key cannot hold sealed keys: {'; '.join(problems)}")
    return "\n".join(lines) + "\n"


# -- plumbing -------------------------------------------------------------------------------------------


def read_provider_key(stream: TextIO | None, *, prompt: str) -> SecretStr:
    """The key from a hidden prompt on a terminal, else all of stdin minus exactly one trailing newline."""
    if stream is None:
        raise KeyUsageError("no stdin to read the provider key from")
    if stream.isatty():
        return SecretStr(getpass.getpass(prompt))
    buffer = getattr(stream, "buffer", None)
    raw: Any = buffer.read() if buffer is not None else stream.read()
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyUsageError("the provider key on stdin is not UTF-8 text") from None
    text = str(raw)
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return SecretStr(text)


def refuse_surrounding_whitespace(key: SecretStr) -> SecretStr:
    """No provider issues keys with spaces around them: they come from a paste or an ``echo`` gone wrong,
    and sealed as they are they would fail at the provider with ``auth_failed`` on every job."""
    value = key.get_secret_value()
    if value and not value.strip():
        raise KeyUsageError("the provider key is only whitespace: nothing was sealed")
    if value != value.strip():
        raise KeyUsageError("the provider key has leading or trailing whitespace (a space, tab or line break): "
                            "nothing was sealed")
    return key


def _resolve_endpoint(args: argparse.Namespace, *, carries_key: bool) -> Endpoint:
    try:
        endpoint = Endpoint.resolve(Provider(args.provider), args.base_url)
        check_destination(endpoint, None, carries_key=carries_key)
    except EndpointError as exc:
        raise KeyUsageError(f"--base-url: {exc}") from None
    return endpoint


def _say(args: argparse.Namespace, message: str) -> None:
    print(f"byok keys {args.keys_command}: {message}", file=sys.stderr)


def _run(args: argparse.Namespace, body: Callable[[KeyAdmin], int]) -> int:
    settings = configured_settings(VaultSettings)
    try:
        return body(KeyAdmin.from_settings(settings))
    except KeyAdminError as exc:
        _say(args, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _say(args, "interrupted: nothing was sealed")
        return 130

