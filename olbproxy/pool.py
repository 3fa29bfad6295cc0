"""The pool: backends (Ollama instances), their health and slots, grouped as configured.

A ``Backend`` counts its own in-flight requests per model, because Ollama's
``OLLAMA_NUM_PARALLEL`` is a per-model slot count that its API never reveals. A
``Group`` picks backends round-robin among those that are healthy and have a free
slot; its ``Admission`` (admission.py) queues requests when none has. ``repr()`` of
each shows live state, which is what you want in a debugger or a log line.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from olbproxy.admission import Admission
from olbproxy.errors import Unavailable
from olbproxy.routing import normalise_model
from olbproxy.settings import GroupSettings, Settings

# How long an answer vouches for its model staying loaded, until /api/ps says more.
ANSWERED_RESIDENT = 60.0


def loaded_models(answer: Any) -> dict[str, float]:
    """``/api/ps``: each loaded model (normalised name) and when it unloads (epoch s)."""
    found: dict[str, float] = {}
    for model in answer.get("models") or [] if isinstance(answer, dict) else []:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            continue
        try:
            expires = datetime.fromisoformat(str(model.get("expires_at"))).timestamp()
        except (ValueError, OverflowError, OSError):
            expires = float("inf")  # shown without a usable expiry: loaded for now
        found[normalise_model(model["name"])] = expires
    return found


class Backend:
    """One Ollama instance."""

    __slots__ = (
        "_by_model",
        "checked_at",
        "epochs",
        "failures",
        "healthy",
        "host_header",
        "in_flight",
        "label",
        "last_error",
        "loaded",
        "resident",
        "slots",
        "url",
        "version",
    )

    def __init__(self, url: str, slots: int) -> None:
        self.url = url
        # Ollama bound to loopback answers 403 to a foreign Host, so we send its own.
        self.host_header = urlsplit(url).netloc
        self.label = self.host_header  # bounded metric label: host:port
        self.slots = slots
        self.in_flight = 0
        self._by_model: dict[str, int] = {}
        self.healthy = True  # optimistic until the first probe or request says otherwise
        self.failures = 0
        self.last_error: str | None = None
        self.version: str | None = None
        self.checked_at: float | None = None
        self.loaded: tuple[str, ...] = ()
        # Models loaded now (normalised name -> when they unload, epoch seconds), from
        # /api/ps and from answers; and per model a count of the times its prompt
        # caches were lost (an unload, a cold load), which outdates what placement knew.
        self.resident: dict[str, float] = {}
        self.epochs: dict[str, int] = {}

    def is_resident(self, model: str, now: float | None = None) -> bool:
        expires = self.resident.get(model)
        if expires is None:
            return False
        return expires > (time.time() if now is None else now) or model in self._by_model

    def note_loaded(self, models: dict[str, float], names: Sequence[str] = ()) -> None:
        """What /api/ps says is loaded; a model gone since the last look lost its caches."""
        for model in self.resident.keys() - models.keys():
            if model not in self._by_model:
                self.epochs[model] = self.epochs.get(model, 0) + 1
        self.resident = {m: e for m, e in self.resident.items() if m in self._by_model}
        self.resident.update(models)
        self.loaded = tuple(names) if names else tuple(models)

    def note_ps(self, answer: Any) -> None:
        """An /api/ps answer of this backend."""
        models = answer.get("models") if isinstance(answer, dict) else None
        names = [str(m.get("name")) for m in models or [] if isinstance(m, dict)]
        self.note_loaded(loaded_models(answer), names)

    def note_answer(self, model: str, *, cold: bool) -> None:
        """An answer came: the model is loaded; a cold load started its caches afresh."""
        if cold:
            self.epochs[model] = self.epochs.get(model, 0) + 1
        until = time.time() + ANSWERED_RESIDENT
        self.resident[model] = max(self.resident.get(model, 0.0), until)

    def has_slot(self, model: str) -> bool:
        return self.healthy and self._by_model.get(model, 0) < self.slots

    def busy_for(self, model: str) -> int:
        return self._by_model.get(model, 0)

    def take(self, model: str) -> None:
        self.in_flight += 1
        self._by_model[model] = self._by_model.get(model, 0) + 1

    def give(self, model: str) -> None:
        self.in_flight -= 1
        left = self._by_model[model] - 1
        if left:
            self._by_model[model] = left
        else:
            del self._by_model[model]

    def mark_ok(self) -> bool:
        """Record a success; True when this brings the backend back into rotation."""
        came_back = not self.healthy
        self.healthy = True
        self.failures = 0
        self.last_error = None
        self.checked_at = time.time()
        return came_back

    def mark_failed(self, reason: str, *, threshold: int, certain: bool = False) -> bool:
        """Record a failure; True when this takes the backend out of rotation.

        ``certain`` failures (connection refused) count as reaching the threshold at
        once: there is no point sending the next user to a port nobody listens on.
        """
        self.failures += 1
        self.last_error = reason
        self.checked_at = time.time()
        if self.healthy and (certain or self.failures >= threshold):
            self.healthy = False
            return True
        return False

    def __repr__(self) -> str:
        state = "up" if self.healthy else f"down ({self.last_error})"
        return f"<Backend {self.url} {state} in_flight={self.in_flight}/{self.slots}>"


class Group:
    """Backends serving the same models, with a round-robin cursor and a wait queue."""

    def __init__(self, settings: GroupSettings, backends: list[Backend]) -> None:
        self.settings = settings
        self.backends = backends
        self._cursor = 0
        self.admission = Admission(self)
        # The pool replaces this so that a backend shared by two groups wakes both queues.
        self.slot_freed: Callable[[Backend], None] = lambda _backend: self.admission.dispatch()

    @property
    def name(self) -> str:
        return self.settings.name

    def update(self, settings: GroupSettings, backends: list[Backend]) -> None:
        self.settings = settings
        self.backends = backends
        self._cursor %= max(1, len(backends))
        self.admission.dispatch()

    def pick(self, model: str, exclude: Collection[Backend] = ()) -> Backend | None:
        """Next backend in round-robin order that is healthy and has a free slot for model."""
        n = len(self.backends)
        for i in range(n):
            index = (self._cursor + i) % n
            backend = self.backends[index]
            if backend.has_slot(model) and backend not in exclude:
                self._cursor = (index + 1) % n
                return backend
        return None

    def rotate(self, exclude: Collection[Backend] = ()) -> Backend | None:
        """Next healthy backend in round-robin order, ignoring slots (metadata requests)."""
        n = len(self.backends)
        for i in range(n):
            index = (self._cursor + i) % n
            backend = self.backends[index]
            if backend.healthy and backend not in exclude:
                self._cursor = (index + 1) % n
                return backend
        return None

    def healthy(self, exclude: Collection[Backend] = ()) -> list[Backend]:
        return [b for b in self.backends if b.healthy and b not in exclude]

    def steward(self) -> Backend | None:
        """The backend that takes model management: the first healthy one in file order.

        Stable on purpose: a blob upload and the /api/create that uses it must meet.
        """
        return next((b for b in self.backends if b.healthy), None)

    def __repr__(self) -> str:
        return f"<Group {self.name} {self.backends!r} waiting={self.admission.waiting}>"


class Pool:
    """All groups and backends; rebuilt from Settings on reload, keeping live backends."""

    def __init__(self, settings: Settings) -> None:
        self.backends: dict[str, Backend] = {}
        self.groups: dict[str, Group] = {}
        self._by_label: dict[str, Backend] = {}  # every finished exchange looks one up
        self._any_cursor = -1
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """(Re)build from settings; backends and groups that stay keep their live state."""
        backends: dict[str, Backend] = {}
        groups: dict[str, Group] = {}
        for gs in settings.groups:
            members: list[Backend] = []
            for url in gs.endpoints:
                backend = backends.get(url) or self.backends.get(url) or Backend(url, gs.slots)
                if url not in backends:
                    backend.slots = gs.slots
                backends[url] = backend
                if backend not in members:
                    members.append(backend)
            group = self.groups.get(gs.name)
            if group is None:
                group = Group(gs, members)
                group.slot_freed = self.slot_freed
            else:
                group.update(gs, members)
            groups[gs.name] = group
        for name, group in self.groups.items():
            if name not in groups:
                group.admission.close(f"group {name!r} was removed by a configuration reload")
        self.backends, self.groups = backends, groups
        self._by_label = {}
        for backend in backends.values():
            self._by_label.setdefault(backend.label, backend)  # the first, as before

    def groups_of(self, backend: Backend) -> Iterator[Group]:
        return (g for g in self.groups.values() if backend in g.backends)

    def slot_freed(self, backend: Backend) -> None:
        for group in self.groups_of(backend):
            group.admission.dispatch()

    def all_backends(self) -> list[Backend]:
        return list(self.backends.values())

    def backend(self, label: str | None) -> Backend | None:
        """The backend with this label (host:port), as exchanges name it."""
        return self._by_label.get(label) if label is not None else None

    def rotate_any(self) -> Backend | None:
        """A healthy backend from any group, spreading requests that name no model."""
        for group in itertools.islice(self._group_cycle(), len(self.groups)):
            if (backend := group.rotate()) is not None:
                return backend
        return None

    def _group_cycle(self) -> Iterator[Group]:
        # Start from a different group each time so one group does not take all of it.
        groups = list(self.groups.values())
        if not groups:
            return iter(())
        self._any_cursor = (self._any_cursor + 1) % len(groups)
        return itertools.islice(itertools.cycle(groups), self._any_cursor, None)

    def steward(self) -> Backend | None:
        """The backend for requests that name no model but change the model store (blobs)."""
        return next((b for g in self.groups.values() if (b := g.steward()) is not None), None)

    def __repr__(self) -> str:
        return f"<Pool {list(self.groups.values())!r}>"


class SlotPlacement:
    """Model requests: a slot on one of the group's backends, waiting in its queue if needed;
    the next free one in round-robin order (placement.py places by cost instead)."""

    __slots__ = ("counted", "group", "interactive", "model", "pool", "user")

    def __init__(
        self,
        pool: Pool,
        group: Group,
        model: str,
        user: str,
        interactive: bool,
        counted: Counter[tuple[str, str]] | None = None,
    ) -> None:
        self.pool, self.group, self.model = pool, group, model
        self.user, self.interactive = user, interactive
        self.counted = counted  # placements by (group, reason), for the metrics

    async def acquire(self, exclude: Sequence[Backend]) -> Backend:
        backend = await self.group.admission.acquire(
            self.model, user=self.user, interactive=self.interactive, exclude=exclude
        )
        if self.counted is not None:
            self.counted[self.group.name, "round_robin"] += 1
        return backend

    def release(self, backend: Backend) -> None:
        backend.give(self.model)
        self.pool.slot_freed(backend)


class RotatePlacement:
    """Requests that cost the backend little (show, metadata): next healthy backend."""

    __slots__ = ("group",)

    def __init__(self, group: Group) -> None:
        self.group = group

    async def acquire(self, exclude: Sequence[Backend]) -> Backend:
        backend = self.group.rotate(exclude)
        if backend is None:
            raise Unavailable(self.group.admission.none_healthy(exclude))
        return backend

    def release(self, backend: Backend) -> None:
        pass


class FixedPlacement:
    """A given order of backends (model management, blobs): the first, then the next."""

    __slots__ = ("backends",)

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = backends

    async def acquire(self, exclude: Sequence[Backend]) -> Backend:
        for backend in self.backends:
            if backend not in exclude and backend.healthy:
                return backend
        raise Unavailable("no healthy backend can take this request")

    def release(self, backend: Backend) -> None:
        pass
