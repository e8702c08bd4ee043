"""``byok tokens create|list|revoke``: the aggregator API's bearer tokens (only their hashes are stored)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.aggregator.tokens import HASH_PREFIX_LEN, TokenFileError, add_token, read_entries, revoke_token
from worker.cli.common import configured_settings
from worker.settings import ApiTokensSettings

USAGE_ERROR = 2
TOKENS_FILE_VARIABLE = "BYOK_API_TOKENS_FILE"
EXIT_CODES = "exit codes: 0 done, 1 the tokens file cannot be written, 2 a usage error or an unusable tokens file"


def _tokens_file(args: argparse.Namespace) -> Path:
    path = args.file or configured_settings(ApiTokensSettings).api_tokens_file
    if not path:
        raise TokenFileError(f"no tokens file: give --file or set {TOKENS_FILE_VARIABLE}")
    return Path(path)


def create_command(args: argparse.Namespace) -> int:
    token, entry = add_token(_tokens_file(args), args.scope)
    print(token)
    print(f"byok tokens: token for {entry.scope} added (hash {entry.sha256[:HASH_PREFIX_LEN]}); "
          "it is shown only now", file=sys.stderr)
    return 0


def list_command(args: argparse.Namespace) -> int:
    entries = read_entries(_tokens_file(args))
    print(f"{'hash prefix':<{HASH_PREFIX_LEN}}  {'scope':<20}  created")
    for entry in entries:
        print(f"{entry.sha256[:HASH_PREFIX_LEN]:<{HASH_PREFIX_LEN}}  {entry.scope:<20}  {entry.created_at}")
    return 0


def revoke_command(args: argparse.Namespace) -> int:
    entry = revoke_token(_tokens_file(args), args.hash_prefix)
    print(f"revoked the token for {entry.scope} (hash {entry.sha256[:HASH_PREFIX_LEN]})")
    return 0


def _guarded(command: argparse.Namespace) -> int:
    try:
        code: int = command.run(command)
    except TokenFileError as exc:
        print(f"byok tokens {command.verb}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as exc:  # the file could not be written
        print(f"byok tokens {command.verb}: the tokens file cannot be written ({type(exc).__name__})", file=sys.stderr)
        return 1
    return code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tokens = subparsers.add_parser(
        "tokens", help="bearer tokens of the aggregator API and page",
        description="Tokens for the aggregator's API and page, each scoped to one workspace or to * (all). The\n"
                    f"tokens file ({TOKENS_FILE_VARIABLE}, or --file) holds only their SHA-256 hashes and scopes;\n"
                    "a running aggregator rereads it when it changes.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = tokens.add_subparsers(dest="verb", required=True, metavar="VERB")
    file_help = f"the tokens file (default: ${TOKENS_FILE_VARIABLE})"
    epilog = f"settings: {TOKENS_FILE_VARIABLE} (unless --file). " + EXIT_CODES

    listing = verbs.add_parser(
        "list", help="scopes and hash prefixes (never a token)", epilog=epilog,
        description="Lists the tokens of the file: the first digits of each hash, its scope and when it was made.",
    )
    listing.add_argument("--file", help=file_help)
    listing.set_defaults(func=_guarded, run=list_command)

    create = verbs.add_parser(
        "create", help="a new token, printed once (the only time it is shown)", epilog=epilog,
        description="Makes a new API token scoped to one workspace (or * for all), adds its SHA-256 hash and\n"
                    "scope to the tokens file, and prints the token on stdout: the only time it is shown.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("scope", help="the workspace id it may read, or * for every workspace")
    create.add_argument("--file", help=file_help)
    create.set_defaults(func=_guarded, run=create_command)

    revoke = verbs.add_parser(
        "revoke", help="removes the token whose hash starts with the prefix", epilog=epilog,
        description="Removes the one token whose hash starts with the prefix (byok tokens list shows them); a\n"
                    "running aggregator refuses it from its next request on.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    revoke.add_argument("hash_prefix", help="a prefix of the hash, as byok tokens list shows it")
    revoke.add_argument("--file", help=file_help)
    revoke.set_defaults(func=_guarded, run=revoke_command)
