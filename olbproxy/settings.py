"""Settings: the frozen configuration of one proxy, passed in everywhere, never global.

config.py builds it (defaults, then YAML, then the environment, then validation); every
other module only reads it. Defaults here are the ones a fresh deployment gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ModelStore = Literal["shared", "separate"]
Registration = Literal["open", "invite", "closed"]
PlacementPolicy = Literal["cache_aware", "round_robin"]
# Runner options a group may pin (prompt.RUNNER_OPTIONS): a request that changed one
# would make the instance reload the model under everyone else.
PinnedOptions = tuple[tuple[str, int | bool], ...]


@dataclass(frozen=True)
class GroupSettings:
    """One port group: the models it serves and the Ollama instances that serve them."""

    name: str
    models: tuple[str, ...]
    endpoints: tuple[str, ...]
    # Concurrent requests per instance; match the instances' OLLAMA_NUM_PARALLEL.
    slots: int = 1
    queue_size: int = 256
    queue_timeout: float = 300.0
    # Long enough for a cold load of a 120B model from disk.
    first_byte_timeout: float = 600.0
    idle_timeout: float = 120.0
    # Non-streaming answers arrive whole at the end, so they get a total bound instead.
    total_timeout: float = 1800.0
    max_attempts: int = 3
    # "shared": all instances read one ~/.ollama/models (one Mac), so pull/create/delete
    # go to one instance; "separate": every instance has its own store.
    model_store: ModelStore = "shared"
    warmup: bool = False
    keep_alive: str | None = None
    # Refuse requests asking for more than this (None: no limit); a huge num_ctx would
    # make the instance reload the model with a giant KV cache for everybody.
    max_num_ctx: int | None = None
    max_num_predict: int | None = None
    # Where a request goes inside the group: "cache_aware" (placement.py: the instance
    # holding its prompt's prefix, with the model loaded, unless waiting there costs
    # more) or "round_robin" (the next instance with a free slot).
    placement: PlacementPolicy = "cache_aware"
    # Runner options every request to the group is sent with, whatever the client says.
    pin_options: PinnedOptions = ()

    @property
    def catch_all(self) -> bool:
        return "*" in self.models


@dataclass(frozen=True)
class HealthSettings:
    interval: float = 5.0
    timeout: float = 3.0
    # Consecutive failures (active or passive) before a backend leaves the rotation.
    fail_threshold: int = 2


@dataclass(frozen=True)
class AuthSettings:
    enabled: bool = True
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    token_ttl: float = 7 * 24 * 3600.0
    issuer: str | None = None
    audience: str | None = None
    bcrypt_cost: int = 12
    registration: Registration = "open"
    # Codes accepted by /api/auth/register when registration is "invite" (reusable).
    invite_codes: tuple[str, ...] = field(default=(), repr=False)
    # Groups given to self-registered users; empty: every group.
    default_groups: tuple[str, ...] = ()
    min_password_length: int = 8
    trusted_networks: tuple[str, ...] = ()
    trusted_user: str | None = None
    # Failed logins per username, and attempts per client address, within login_window.
    login_attempts: int = 5
    address_attempts: int = 20
    login_window: float = 300.0
    # How long a verified API key or token stays cached; revocations show within this.
    cache_seconds: float = 5.0


@dataclass(frozen=True)
class StoreSettings:
    mongodb_uri: str | None = field(default=None, repr=False)
    database: str = "olbproxy"
    # "memory" keeps everything in process (demo); "mongodb" needs mongodb_uri.
    backend: Literal["mongodb", "memory"] = "mongodb"
    # Seconds to wait for MongoDB before answering 503 (server selection, connect).
    timeout: float = 3.0
    # Records wait here (fsync'd) while MongoDB cannot take them; relative to the
    # working directory. Replayed in order once MongoDB answers, also after a restart.
    spool_dir: str = "var/spool"
    # Finished exchanges waiting in memory for the writer; beyond this, to the spool.
    queue_size: int = 10_000
    # Records per MongoDB write. Small on purpose: building and encoding a batch runs on
    # the event loop, and a batch of 200 held streams up for ~10 ms; 32 keeps it ~1 ms.
    batch_size: int = 32
    # False: no message text and no titles, only metadata, counters and history hashes.
    store_content: bool = True
    # False: conversations are not recorded at all (users and API keys still are).
    record: bool = True


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True
    # "open", "token" (admin bearer), or a separate "host:port" listener.
    access: Literal["open", "token"] = "open"
    listen: str | None = None
    user_labels: bool = False


@dataclass(frozen=True)
class PlacementSettings:
    """Cache-aware placement (placement.py) and what it shows about its decisions."""

    # X-Olbproxy-Placement on answers to admins: why the request went where it went.
    header: bool = False
    # Seconds between loads of placements other proxies recorded with their rooms.
    refresh: float = 5.0
    # How old a recorded placement may be to be loaded at start (seconds).
    horizon: float = 6 * 3600.0
    # A load_duration at or above this means the model was loaded for the request: a
    # cold load for the metrics, a lost prompt cache for placement.
    cold_load_seconds: float = 1.0
    # Prompt tokens an instance's caches hold per model (its slots plus llama-server's
    # 8 GiB host-RAM cache: ~350k tokens of gpt-oss:20b, ~230k of 120b). A prefix the
    # instance has processed this many tokens since is assumed gone.
    cache_tokens: int = 200_000


@dataclass(frozen=True)
class Settings:
    listen_host: str = "0.0.0.0"
    listen_port: int = 11434
    groups: tuple[GroupSettings, ...] = ()
    origins: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024 * 1024
    # Seconds a client may take to send its request body (slow senders hold a slot).
    body_timeout: float = 60.0
    connect_timeout: float = 5.0
    shutdown_deadline: float = 60.0
    log_level: str = "INFO"
    health: HealthSettings = HealthSettings()
    auth: AuthSettings = AuthSettings()
    store: StoreSettings = StoreSettings()
    metrics: MetricsSettings = MetricsSettings()
    placement: PlacementSettings = PlacementSettings()
    source: str = "<defaults>"
    # Things the operator should read at start-up (e.g. OLLAMA_ENDPOINTS took over).
    notices: tuple[str, ...] = ()

    def group(self, name: str) -> GroupSettings | None:
        return next((g for g in self.groups if g.name == name), None)
