"""API keys: the admin key (`SUGAR_API_KEY`) and keys scoped to collections (`SUGAR_API_KEYS_FILE`).

The keys file is a JSON list of grants, keys stored only as their SHA-256:

    [{"key_sha256": "<64 hex>", "collections": ["alpha", "team-*"], "access": "r" | "rw" | "admin"}]

`r` reads the matching collections (retrieve, generate and chat over them, list and get their
documents, their statistics), `rw` also writes them (documents, uploads, `/embed` with store),
`admin` also creates and deletes them; `*` in a pattern matches any run of characters. The
admin key may do everything, `/metrics` included. A key is checked by hashing what the
client sent and comparing the digest with every grant's in constant time (`hmac.compare_digest`);
neither the key nor its hash is ever logged or put in a response. The file is read again when
it changes (checked at most once a second) and on SIGHUP; a file that does not parse keeps the
keys in force and logs why (at start-up it stops the server instead).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ACCESS = ("r", "rw", "admin")  # each includes the ones before it
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Forbidden(PermissionError):
    """The key may not do this on this collection: a 403 naming it."""

    def __init__(self, message: str, collection: str | None = None) -> None:
        super().__init__(message)
        self.collection = collection


class KeysFileError(ValueError):
    """The keys file does not parse: the message names the file and the entry."""


def _pattern(p: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(part) for part in p.split("*")) + "$")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the admin (every collection, every access) or a scoped grant."""

    access: str
    patterns: tuple[str, ...] = ("*",)
    admin: bool = False  # the SUGAR_API_KEY, or no authentication configured

    def sees(self, collection: str) -> bool:
        return self.admin or any(_pattern(p).match(collection) for p in self.patterns)

    def may(self, collection: str, need: str) -> bool:
        return self.admin or (self.sees(collection) and ACCESS.index(self.access) >= ACCESS.index(need))

    def require(self, collection: str, need: str) -> None:
        if self.may(collection, need):
            return
        what = {"r": "read", "rw": "write", "admin": "administer"}[need]
        if not self.sees(collection):
            raise Forbidden(f"this API key has no access to collection {collection!r}", collection)
        raise Forbidden(f"this API key may not {what} collection {collection!r} (its access: {self.access})",
                        collection)

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this route needs the admin key (SUGAR_API_KEY)")


ADMIN = Principal("admin", admin=True)


@dataclass(frozen=True)
class Grant:
    digest: bytes  # SHA-256 of the key
    principal: Principal


def parse_keys(text: str, where: str) -> list[Grant]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise KeysFileError(f"{where}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise KeysFileError(f"{where}: expected a JSON list of grants")
    grants = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or set(entry) != {"key_sha256", "collections", "access"}:
            raise KeysFileError(f"{where}: entry {i} must have exactly key_sha256, collections and access")
        digest, patterns, access = entry["key_sha256"], entry["collections"], entry["access"]
        if not isinstance(digest, str) or not HEX64.match(digest.lower()):
            raise KeysFileError(f"{where}: entry {i}: key_sha256 must be 64 hexadecimal digits")
        if (not isinstance(patterns, list) or not patterns
                or not all(isinstance(p, str) and 0 < len(p) <= 256 for p in patterns)):
            raise KeysFileError(f"{where}: entry {i}: collections must be a non-empty list of names or patterns")
        if access not in ACCESS:
            raise KeysFileError(f"{where}: entry {i}: access must be one of {', '.join(ACCESS)}")
        grants.append(Grant(bytes.fromhex(digest.lower()), Principal(access, tuple(patterns))))
    return grants


class KeyRing:
    """The keys a server accepts; `authenticate(token)` gives its Principal or None."""

    def __init__(self, admin_key: str | None, keys_file: Path | None) -> None:
        self.admin_digest = hashlib.sha256(admin_key.encode()).digest() if admin_key else None
        self.keys_file = keys_file
        self.grants: list[Grant] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._reload = threading.Event()
        self._lock = threading.Lock()
        if keys_file is not None:
            self._load(strict=True)

    @property
    def enabled(self) -> bool:
        return self.admin_digest is not None or self.keys_file is not None

    def request_reload(self) -> None:
        """SIGHUP: read the file again at the next request."""
        self._reload.set()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        assert self.keys_file is not None
        try:
            st = os.stat(self.keys_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self, strict: bool) -> None:
        assert self.keys_file is not None
        stamp = self._file_stamp()
        try:
            grants = parse_keys(Path(self.keys_file).read_text(), str(self.keys_file))
        except (OSError, KeysFileError) as e:
            if strict:
                raise KeysFileError(str(e)) from None
            logger.error("API keys file not reloaded, the keys in force stay: %s", e)
            self._stamp = stamp  # do not retry until it changes again
            return
        self.grants, self._stamp = grants, stamp
        logger.info("API keys file %s: %d scoped keys", self.keys_file, len(grants))

    def _maybe_reload(self) -> None:
        if self.keys_file is None:
            return
        now = time.monotonic()
        if not self._reload.is_set() and now - self._checked < 1.0:
            return
        with self._lock:
            self._checked = now
            if self._reload.is_set() or self._file_stamp() != self._stamp:
                self._reload.clear()
                self._load(strict=False)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a presented key (None: no such key). Every comparison is between
        SHA-256 digests, in constant time, and every grant is compared."""
        self._maybe_reload()
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        if self.admin_digest is not None and hmac.compare_digest(digest, self.admin_digest):
            found = ADMIN
        for g in self.grants:
            if hmac.compare_digest(digest, g.digest) and found is None:
                found = g.principal
        return found


__all__ = ["ACCESS", "ADMIN", "Forbidden", "KeyRing", "KeysFileError", "Principal", "parse_keys"]
