"""API tokens: the file of their hashes and scopes (``BYOK_API_TOKENS_FILE``), and the registry that reads it.

The file is JSON, ``{"tokens": [{"sha256": "<hex>", "scope": "<workspace>|*", "created_at": "<ISO time>"}]}``.
It never holds a token: ``byok tokens create`` prints the token once and stores only its SHA-256. The
aggregator rereads the file whenever it changes (size, modification time or inode), so a token created or
revoked takes effect at the next request without a restart.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import structlog

from schemas.models import IDENTIFIER_PATTERN

log = structlog.get_logger("byok.aggregator")

ALL_WORKSPACES = "*"
TOKEN_PREFIX = "byok_"  # noqa: S105 - the prefix of every token, not a secret
HASH_PREFIX_LEN = 12
"""How much of a hash ``byok tokens list`` shows: enough to revoke by, too little to matter."""
MIN_REVOKE_PREFIX = 4

_SCOPE = re.compile(IDENTIFIER_PATTERN)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class TokenFileError(ValueError):
    """The tokens file cannot be read or is not a tokens file (the message never quotes its contents)."""


@dataclass(frozen=True)
class TokenEntry:
    sha256: str
    scope: str
    created_at: str

    def as_dict(self) -> dict[str, str]:
        return {"sha256": self.sha256, "scope": self.scope, "created_at": self.created_at}


def valid_scope(scope: str) -> bool:
    return scope == ALL_WORKSPACES or _SCOPE.fullmatch(scope) is not None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def read_entries(path: Path) -> list[TokenEntry]:
    """The entries of the file; a file that does not exist has none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TokenFileError(f"the tokens file cannot be read ({type(exc).__name__})") from None
    try:
        loaded = orjson.loads(raw) if raw.strip() else {"tokens": []}
        items = loaded["tokens"]
        if not isinstance(items, list):
            raise TypeError
        entries = [TokenEntry(str(item["sha256"]), str(item["scope"]), str(item.get("created_at", "")))
                   for item in items]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise TokenFileError('the tokens file is not {"tokens": [{"sha256", "scope"}, ...]}') from None
    for entry in entries:
        if not _HEX64.fullmatch(entry.sha256) or not valid_scope(entry.scope):
            raise TokenFileError("the tokens file has an entry that is not a SHA-256 hex digest and a scope")
    return entries


def write_entries(path: Path, entries: list[TokenEntry]) -> None:
    """Replaces the file atomically (a reader sees the old file or the new one), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = orjson.dumps({"tokens": [e.as_dict() for e in entries]}, option=orjson.OPT_INDENT_2) + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_token(path: Path, scope: str) -> tuple[str, TokenEntry]:
    """A new token for ``scope``, its hash added to the file; the token itself is returned, never stored."""
    if not valid_scope(scope):
        raise TokenFileError(f"the scope must be a workspace id ({IDENTIFIER_PATTERN}) or {ALL_WORKSPACES}")
    token = new_token()
    entry = TokenEntry(token_hash(token), scope, datetime.now(UTC).isoformat(timespec="seconds"))
    write_entries(path, [*read_entries(path), entry])
    return token, entry


def revoke_token(path: Path, hash_prefix: str) -> TokenEntry:
    """Removes the one entry whose hash starts with ``hash_prefix``."""
    prefix = hash_prefix.strip().lower()
    if len(prefix) < MIN_REVOKE_PREFIX or not re.fullmatch(r"[0-9a-f]+", prefix):
        raise TokenFileError(f"a hash prefix is at least {MIN_REVOKE_PREFIX} hex digits (byok tokens list shows them)")
    entries = read_entries(path)
    matching = [e for e in entries if e.sha256.startswith(prefix)]
    if not matching:
        raise TokenFileError(f"no token's hash starts with {prefix}")
    if len(matching) > 1:
        raise TokenFileError(f"{len(matching)} tokens' hashes start with {prefix}: give more digits")
    write_entries(path, [e for e in entries if e is not matching[0]])
    return matching[0]


class TokenRegistry:
    """The scopes of the tokens in ``path``, reread when the file changes.

    A file that goes missing or turns unreadable after start-up admits no token (closed, never open),
    with an error log, until it is fixed.
    """

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._scopes: dict[str, str] = {}
        self._load(strict=True)

    @property
    def path(self) -> Path:
        return self._path

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self._path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _load(self, *, strict: bool) -> None:
        stamp = self._current_stamp()
        try:
            entries = read_entries(self._path)
        except TokenFileError as exc:
            if strict:
                raise
            log.error("API tokens file unusable: every token refused until it is fixed", error=str(exc))
            entries = []
        self._scopes = {e.sha256: e.scope for e in entries}
        self._stamp = stamp
        if not strict:
            log.info("API tokens file reread", tokens=len(self._scopes))

    def refresh(self) -> None:
        if self._current_stamp() != self._stamp:
            self._load(strict=False)

    def scope_of(self, token: str) -> str | None:
        """The token's scope (a workspace or ``*``), or None when the file does not list it."""
        self.refresh()
        return self._scopes.get(token_hash(token))

    def __len__(self) -> int:
        return len(self._scopes)


def may_read(scope: str, workspace_id: str) -> bool:
    return scope in (ALL_WORKSPACES, workspace_id)
