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
    max_body_bytes: int = 1 << 20  # every route but POST /v1/documents
    # A connection must deliver the request line and headers within header_timeout_s of
    # starting to wait for a request, and the whole request within read_timeout_s, however
    # slowly it trickles bytes; at most max_connections are open at once.
    header_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    max_connections: int = 500
    # Concurrent CPU-heavy non-generation requests (/v1/embeddings, /v1/retrieve, DELETE
    # /v1/documents); as many more may wait, the rest get 503. 0: as many as `slots`.
    cpu_slots: int = 0
    max_document_bytes: int = 32 << 20  # POST /v1/documents (a manual as base64 JSON)
    # Parse limits per uploaded document (appliance/documents/limits.py): inflated size of a
    # DOCX, PDF pages, chunks, and seconds to parse and embed. Over any: 422 naming it.
    max_document_uncompressed_bytes: int = 128 << 20
    max_document_pages: int = 2000
    max_document_chunks: int = 5000
    max_document_seconds: float = 120.0
    max_tokens_default: int = 256
    max_tokens_limit: int = 2048
    top_k: int = 5
    abstain_threshold: float | None = None  # None: the bundle's value, else the default
    abstain_message: str = ""  # "": appliance.prompting.NOT_IN_DOCUMENTS
    api_keys_file: Path | None = None  # None: <state_dir>/api_keys.json
    # Host names (comma-separated) a request's Host may carry besides the bound address and
    # loopback names: the names terminals use for this box. Anything else is a DNS-rebinding
    # page and gets 403.
    allowed_hosts: str = ""
    # Origins (scheme://host[:port], comma-separated) of other web pages allowed to call the
    # API from a browser; the service's own origin always is. Any other Origin gets 403.
    allowed_origins: str = ""
    ui_language: str = ""  # terminal page language (en, es); "": the browser's Accept-Language
    threads: int | None = None  # intra-op threads per generation; None: one per usable core
    # KV tokens kept for the next request's shared start (appliance.generation.genai); 0: off
    prefix_cache_tokens: int = 2048
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
        for name in (
            "max_document_uncompressed_bytes",
            "max_document_pages",
            "max_document_chunks",
        ):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        v = self.max_document_seconds
        if not (math.isfinite(v) and v > 0):
            raise bad("max_document_seconds", f"must be a positive number of seconds, got {v}")
        for name in ("header_timeout_s", "read_timeout_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise bad(name, f"must be a positive number of seconds, got {v}")
        if not (16 <= self.max_connections <= 10_000):
            raise bad("max_connections", f"must be 16-10000, got {self.max_connections}")
        if not (0 <= self.cpu_slots <= MAX_SLOTS):
            raise bad("cpu_slots", f"must be 0-{MAX_SLOTS} (0 = slots), got {self.cpu_slots}")
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
        for name in ("allowed_hosts", "allowed_origins"):
            for item in _split_list(getattr(self, name)):
                if any(c.isspace() for c in item) or "/" in item.partition("://")[2]:
                    raise bad(name, f"{item!r} is not valid; give comma-separated entries")
        for origin in _split_list(self.allowed_origins):
            if not origin.startswith(("http://", "https://")):
                raise bad(
                    "allowed_origins",
                    f"{origin!r} is not an origin; write it as http(s)://host[:port]",
                )
        if not (0 <= self.prefix_cache_tokens <= 1 << 20):
            raise bad(
                "prefix_cache_tokens", f"must be 0 (off) to 1048576, got {self.prefix_cache_tokens}"
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
    def parse_limits(self):
        from appliance.documents.limits import ParseLimits

        return ParseLimits(
            max_uncompressed_bytes=self.max_document_uncompressed_bytes,
            max_pages=self.max_document_pages,
            max_chunks=self.max_document_chunks,
            max_seconds=self.max_document_seconds,
        )

    @property
    def cpu_slot_count(self) -> int:
        return self.cpu_slots or self.slots

    @property
    def host_names(self) -> frozenset[str]:
        return frozenset(h.lower().rstrip(".") for h in _split_list(self.allowed_hosts))

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(o.lower().rstrip("/") for o in _split_list(self.allowed_origins))

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


def _split_list(raw: str) -> list[str]:
    return [x.strip() for x in (raw or "").split(",") if x.strip()]


def host_allowed(config: ServeConfig, hostname: str) -> bool:
    """Whether a request's Host (without port) names this service.

    A DNS-rebinding page reaches the bound address under the attacker's own name, so a
    name is accepted only when it is configured (`allowed_hosts`), the bound name, or
    `localhost` on a loopback or wildcard bind. An address literal is accepted when it is the
    bound address (any address on a wildcard bind, any loopback one on a loopback bind).
    """
    name = hostname.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name:
        return False
    bound = config.host.lower()
    if name == bound or name in config.host_names:
        return True
    try:
        bound_ip = ipaddress.ip_address(bound)
    except ValueError:
        bound_ip = None
    wildcard = bound_ip is not None and bound_ip.is_unspecified
    if name == "localhost":
        return wildcard or is_loopback(bound)
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if wildcard:
        return True
    if is_loopback(bound):
        return ip.is_loopback
    return ip == bound_ip


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
