"""The service's configuration: one typed dataclass, from flags and EXPERT_* variables.

Precedence: command-line flag > environment variable (systemd's EnvironmentFile) > default.
Everything is validated once, at load, and a bad value fails start-up with the name of the
setting; nothing is re-read per request.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from appliance.errors import UserFacingError

ENV_PREFIX = "EXPERT_"
DEFAULT_STATE_DIR = Path("/var/lib/industry-expert")
MAX_SLOTS = 64


def default_slots(cpus: int | None = None) -> int:
    """Generation slots from the core count: one per two cores (an int4 decode keeps two
    cores busy; more concurrent sequences on fewer cores only slow every one of them)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cpus or 1) // 2))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def running_in_production(env: Mapping[str, str]) -> bool:
    """Started by systemd (INVOCATION_ID) or explicitly marked EXPERT_ENV=production."""
    return env.get("EXPERT_ENV", "").lower() == "production" or bool(env.get("INVOCATION_ID"))


@dataclass(frozen=True)
class ServeConfig:
    """Settings of `expert serve`. The env variable of a field is EXPERT_<FIELD upper-cased>."""

    bundle: Path | None = None  # None: <state_dir>/current
    state_dir: Path = DEFAULT_STATE_DIR
    host: str = "127.0.0.1"
    port: int = 8080
    slots: int = field(default_factory=default_slots)
    max_queue: int = 0  # 0: 4 x slots
    queue_timeout_s: float = 30.0
    request_timeout_s: float = 300.0
    max_body_bytes: int = 1 << 20
    max_document_bytes: int = 32 << 20  # POST /v1/documents (a manual as base64 JSON)
    max_tokens_default: int = 256
    max_tokens_limit: int = 2048
    top_k: int = 5
    abstain_threshold: float | None = None  # None: the bundle's value, else the default
    abstain_message: str = ""  # "": appliance.prompting.NOT_IN_DOCUMENTS
    api_keys_file: Path | None = None  # None: <state_dir>/api_keys.json
    threads: int | None = None  # intra-op threads per generation; None: onnxruntime decides
    ui_language: str = ""  # terminal page language (en, es); "": the browser's Accept-Language
    debug: bool = False
    production: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> UserFacingError:
            return UserFacingError(
                f"serve setting {name} (flag --{name.replace('_', '-')}, env "
                f"{ENV_PREFIX}{name.upper()}): {why}"
            )

        if not self.host or any(c.isspace() for c in self.host):
            raise bad("host", f"{self.host!r} is not a host name or address")
        if not (0 <= self.port <= 65535):
            raise bad("port", f"must be 0-65535, got {self.port}")
        if not (1 <= self.slots <= MAX_SLOTS):
            raise bad("slots", f"must be 1-{MAX_SLOTS}, got {self.slots}")
        if self.max_queue < 0 or self.max_queue > 4096:
            raise bad("max_queue", f"must be 0-4096 (0 = 4 x slots), got {self.max_queue}")
        for name in ("queue_timeout_s", "request_timeout_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise bad(name, f"must be a positive number of seconds, got {v}")
        if not (1024 <= self.max_body_bytes <= 64 << 20):
            raise bad("max_body_bytes", f"must be 1 KiB-64 MiB, got {self.max_body_bytes}")
        if not (self.max_body_bytes <= self.max_document_bytes <= 512 << 20):
            raise bad(
                "max_document_bytes",
                f"must be max_body_bytes-512 MiB, got {self.max_document_bytes}",
            )
        if self.max_tokens_limit < 1:
            raise bad("max_tokens_limit", f"must be >= 1, got {self.max_tokens_limit}")
        if not (1 <= self.max_tokens_default <= self.max_tokens_limit):
            raise bad(
                "max_tokens_default",
                f"must be 1-max_tokens_limit ({self.max_tokens_limit}), got "
                f"{self.max_tokens_default}",
            )
        if not (1 <= self.top_k <= 20):
            raise bad("top_k", f"must be 1-20, got {self.top_k}")
        t = self.abstain_threshold
        if t is not None and not (math.isfinite(t) and -1.0 <= t <= 1.0):
            raise bad("abstain_threshold", f"must be a cosine score in [-1, 1], got {t}")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", f"must be >= 1, got {self.threads}")
        from appliance.i18n import LANGUAGES

        if self.ui_language and self.ui_language not in LANGUAGES:
            raise bad(
                "ui_language",
                f"must be one of {', '.join(LANGUAGES)} or empty (browser's choice), got "
                f"{self.ui_language!r}",
            )
        if self.debug and (self.production or not is_loopback(self.host)):
            raise bad(
                "debug",
                "debug mode cannot be switched on in production or on a non-loopback address; "
                "unset it (it is for development on 127.0.0.1 only)",
            )

    @property
    def queue_limit(self) -> int:
        return self.max_queue or 4 * self.slots

    @property
    def keys_path(self) -> Path:
        return self.api_keys_file or self.state_dir / "api_keys.json"

    @classmethod
    def load(
        cls, overrides: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None
    ) -> ServeConfig:
        """Build from EXPERT_* variables, then `overrides` (flags; None values are skipped)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "production":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f.name, f.type, raw.strip())
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        values["production"] = running_in_production(env)
        if "state_dir" not in values and env.get("STATE_DIRECTORY"):
            # systemd's StateDirectory= sets STATE_DIRECTORY.
            values["state_dir"] = Path(env["STATE_DIRECTORY"].split(":")[0])
        return cls(**values)


def _parse(name: str, type_name: object, raw: str) -> object:
    kind = str(type_name)
    try:
        if "Path" in kind:
            return Path(raw)
        if kind.startswith("bool"):
            low = raw.lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return low in ("1", "true", "yes", "on")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        return raw
    except ValueError:
        raise UserFacingError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.split(' ')[0]}"
        ) from None
