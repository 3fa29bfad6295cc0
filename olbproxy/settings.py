"""Settings: the frozen configuration of one proxy, passed in everywhere, never global.

config.py builds it (defaults, then YAML, then the environment, then validation); every
other module only reads it. Defaults here are the ones a fresh deployment gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ModelStore = Literal["shared", "separate"]
Registration = Literal["open", "invite", "closed"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]

# The seed app's database (its MONGODB_URI ended in /gpt): the CLI and the server use it
# unless store.database or the URI's path names another one.
DEFAULT_DATABASE = "gpt"
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
    # ``:cloud`` / ``-cloud`` models are run by ollama.com, not on this Mac: an instance
    # forwards the prompt there. Refused unless the group allows them (for its users).
    allow_cloud: bool = False
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
    # Closed unless the operator opens it: the proxy listens on the LAN, and an open
    # sign-up would hand the GPUs to whoever can reach the port.
    registration: Registration = "closed"
    # Codes accepted by /api/auth/register when registration is "invite" (reusable).
    invite_codes: tuple[str, ...] = field(default=(), repr=False)
    # Groups given to self-registered users; empty: every group.
    default_groups: tuple[str, ...] = ()
    min_password_length: int = 8
    trusted_networks: tuple[str, ...] = ()
    trusted_user: str | None = None
    # Host names a tokenless trusted request may carry besides loopback names, IP literals
    # and this machine's own name: a web page that rebinds its domain to 127.0.0.1 sends
    # its own name as Host and must not borrow the network's trust (DNS rebinding).
    trusted_hosts: tuple[str, ...] = ()
    # Failed logins per username, and attempts per client address, within login_window.
    login_attempts: int = 5
    address_attempts: int = 20
    login_window: float = 300.0
    # How long a verified API key or token stays cached; revocations show within this.
    cache_seconds: float = 5.0


@dataclass(frozen=True)
class StoreSettings:
    mongodb_uri: str | None = field(default=None, repr=False)
    # Precedence: store.database in the YAML, else the database MONGODB_URI names, else
    # DEFAULT_DATABASE; config.load resolves it, so this is always the one in use.
    database: str = DEFAULT_DATABASE
    # "memory" keeps everything in process (demo); "mongodb" needs mongodb_uri.
    backend: Literal["mongodb", "memory"] = "mongodb"
    # Seconds to wait for MongoDB before answering 503 (server selection, connect).
    timeout: float = 3.0
    # Records wait here (fsync'd) while MongoDB cannot take them; relative to the
    # working directory. Replayed in order once MongoDB answers, also after a restart.
    spool_dir: str = "var/spool"
    # Finished exchanges waiting in memory for the writer when recording on the loop
    # (recorder "loop", and the memory store); beyond this, to the spool.
    queue_size: int = 10_000
    # Frames waiting in memory for the recording process (recorder "process"); beyond
    # this, on disk (spool_dir/handoff), in order. A frame is about 1 KB for a short
    # exchange: the default holds some 100,000 of those, a minute of the bench's peak,
    # before the relay spends its own time writing and reading them back.
    queue_bytes: int = 128 * 1024 * 1024
    # Records per MongoDB write. Small on purpose: with recorder "loop", building and
    # encoding a batch runs on the relay's event loop, and a batch of 200 held streams up
    # for ~10 ms; 32 keeps it ~1 ms.
    batch_size: int = 32
    # Where records are built, filed and written: "process", a recording process of the
    # proxy's own (persistence/worker.py; the relay's loop only encodes one frame per
    # exchange), or "loop", the relay's own event loop. The memory store always records
    # on the loop: it lives in the proxy's process.
    recorder: Literal["process", "loop"] = "process"
    # How the recording process yields the cores to relaying: above 0, on Linux it runs
    # as SCHED_IDLE (only on a core nothing else wants), elsewhere with this niceness.
    # 0: an ordinary process.
    nice: int = 19
    # Seconds recording may wait while the relay's process is busy (most of a core):
    # records then wait in memory (beyond queue_size on disk) and the recording process
    # and MongoDB leave the cores to relaying. 0: record as exchanges finish, always.
    defer: float = 30.0
    # False: no message text and no titles, only metadata, counters and history hashes.
    store_content: bool = True
    # False: conversations are not recorded at all (users and API keys still are).
    record: bool = True


@dataclass(frozen=True)
class RelaySettings:
    # Token streams forwarded from the backend socket's callback (splice.py): the
    # cheapest way through, on aiohttp internals that tests/test_splice_contract.py
    # checks. False: every answer through aiohttp's documented API only.
    splice: bool = True
    # Whole answers and (with the splice) token streams on the proxy's own pooled
    # keep-alive connections (lane.py, httptools' parser): 175 -> 76 µs of CPU per small
    # request in a bare pass-through, and no connection per stream. False: through
    # aiohttp's client.
    lane: bool = True


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True
    # "open", "token" (admin bearer), or a separate "host:port" listener.
    access: Literal["open", "token"] = "open"
    listen: str | None = None
    user_labels: bool = False


Access = Literal["admin", "user"]


@dataclass(frozen=True)
class AliasSettings:
    """A model name users see, standing for a model with default request fields.

    ``defaults`` are top-level request fields (``think``, ``keep_alive``, ...) and
    ``options``; a client's own values win unless ``force`` is true.
    """

    name: str
    model: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    force: bool = False


@dataclass(frozen=True)
class ExtraRoute:
    """A path of a newer Ollama that this proxy does not know yet (``routes.extra``)."""

    path: str
    methods: tuple[str, ...] = ("POST",)
    access: Access = "admin"
    # True: a JSON body whose ``model`` picks the group (and the caller must be allowed
    # that group); False: sent to ``routes.instance``.
    model: bool = False


@dataclass(frozen=True)
class RoutesSettings:
    """Ollama routes beyond inference and model management, all off unless enabled.

    Account routes (``/api/me``, ``/api/signout``, ``DELETE /api/user/keys/...``) act on
    the ollama.com identity of an instance; experimental ones (web search and fetch) reach
    the internet. Enabled, they are admin-only and go to one instance, never fanned out.
    """

    account: bool = False
    experimental: bool = False
    # The instance those routes (and model-less extra routes) go to; default: the first
    # endpoint of the first group.
    instance: str | None = None
    extra: tuple[ExtraRoute, ...] = ()


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
    log_level: LogLevel = "INFO"
    # "json": every log record one JSON object per line (for log shippers).
    log_format: LogFormat = "text"
    # Write the log to this file instead of stderr; it is reopened when newsyslog (or
    # anything else) moves it away, so rotation needs no signal and no restart.
    log_file: str | None = None
    # One line per model exchange, refusal, login and sign-up (access.py).
    access_log: bool = True
    # Serve HTTPS with this certificate chain and key (PEM files; relative paths are
    # relative to the working directory, like store.spool_dir). Both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    health: HealthSettings = HealthSettings()
    auth: AuthSettings = AuthSettings()
    store: StoreSettings = StoreSettings()
    metrics: MetricsSettings = MetricsSettings()
    routes: RoutesSettings = RoutesSettings()
    relay: RelaySettings = RelaySettings()
    aliases: tuple[AliasSettings, ...] = ()
    # How long an /api/show answer is reused for the same question (editors ask it on
    # every keystroke; every instance of a group reads one model store).
    show_cache_seconds: float = 5.0
    placement: PlacementSettings = PlacementSettings()
    source: str = "<defaults>"
    # Things the operator should read at start-up (e.g. OLLAMA_ENDPOINTS took over).
    notices: tuple[str, ...] = ()

    def group(self, name: str) -> GroupSettings | None:
        return next((g for g in self.groups if g.name == name), None)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
