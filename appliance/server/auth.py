"""API keys: created once and shown once, stored only as sha256 hashes, checked in constant time.

Keys are 256-bit random tokens, so a plain sha256 is enough to make the stored file useless
to a reader (a slow password hash protects guessable secrets; these are not guessable). The
key file lives in the state directory, mode 0600, and is re-read on reload (SIGHUP).

Run: `expert serve --add-key NAME` (prints the new key once), `--list-keys`, `--revoke-key NAME`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from appliance.common.fsutil import atomic_write_text
from appliance.errors import UserFacingError

KEYS_FORMAT_VERSION = 1
KEY_PREFIX = "ex-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class StoredKey:
    name: str
    sha256: str
    created: str


class KeyStore:
    """The API keys the service accepts. Empty: no key is asked for (loopback only)."""

    def __init__(self, keys: list[StoredKey] | None = None) -> None:
        self.keys = list(keys or [])

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def load(cls, path: Path) -> KeyStore:
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserFacingError(
                f"API key file {path} is unreadable ({exc}); fix it or remove it and add keys "
                "again with `expert serve --add-key NAME`"
            ) from None
        if not isinstance(raw, dict) or raw.get("format_version") != KEYS_FORMAT_VERSION:
            raise UserFacingError(
                f"API key file {path} has an unknown format (expected format_version "
                f"{KEYS_FORMAT_VERSION}); recreate it with `expert serve --add-key NAME`"
            )
        keys = []
        for entry in raw.get("keys", []):
            digest = str(entry.get("sha256", ""))
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise UserFacingError(
                    f"API key file {path}: entry {entry.get('name')!r} has no valid sha256"
                )
            keys.append(
                StoredKey(str(entry.get("name", "")), digest, str(entry.get("created", "")))
            )
        return cls(keys)

    def check(self, presented: str | None) -> str | None:
        """The name of the key that matches, or None. Every stored hash is compared (in
        constant time), so timing does not tell how many keys exist or which one is close."""
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key.name
        return found


def require_keys_for_bind(host: str, keys: KeyStore, keys_path: Path) -> None:
    """A service bound beyond loopback never serves without keys: at start, and on reload."""
    from appliance.server.config import is_loopback

    if not is_loopback(host) and not keys.enabled:
        raise UserFacingError(
            f"refusing to listen on {host} without API keys: anyone on the network "
            "could use the service. Add a key with `expert serve --add-key NAME` (keys file "
            f"{keys_path}), or bind 127.0.0.1"
        )


def _write(path: Path, keys: list[StoredKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format_version": KEYS_FORMAT_VERSION,
        "keys": [{"name": k.name, "sha256": k.sha256, "created": k.created} for k in keys],
    }
    atomic_write_text(path, json.dumps(data, indent=2) + "\n", overwrite=True, mode=0o600)


def add_key(path: Path, name: str) -> str:
    """Create a key called `name`, store its hash, and return the key (shown only now)."""
    if not _NAME.match(name):
        raise UserFacingError(
            f"key name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-'"
        )
    store = KeyStore.load(path)
    if any(k.name == name for k in store.keys):
        raise UserFacingError(f"a key called {name!r} exists; revoke it first or pick another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _write(path, [*store.keys, StoredKey(name, hash_key(key), created)])
    return key


def revoke_key(path: Path, name: str) -> None:
    store = KeyStore.load(path)
    kept = [k for k in store.keys if k.name != name]
    if len(kept) == len(store.keys):
        names = ", ".join(k.name for k in store.keys) or "none"
        raise UserFacingError(f"no key called {name!r} (keys: {names})")
    _write(path, kept)
