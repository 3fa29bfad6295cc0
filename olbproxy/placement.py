"""Placement: which instance of a group takes a model request, by what it costs there.

The group is chosen by model (routing.py); inside it, each instance with a free slot
(or worth waiting for) costs, in seconds:

    wait for a slot  +  load the model if it is not resident  +  prefill what it lacks

and the cheapest one wins. The terms come from what the instances have shown:

* **what it lacks**: the request's prompt (prompt.py) cut at message boundaries, looked
  up in the ``PrefixIndex`` (prefixes.py) of prompts each instance has served: the
  deepest boundary an instance holds is cached there, unless the instance lost it
  since (its model was unloaded or loaded afresh: ``Backend.epochs``; or it has
  processed more than ``placement.cache_tokens`` of other prompts since). A
  continuation's own previous exchange is the *sticky* instance; a shared system
  prompt and tool list, or an older turn, make a *prefix* instance (when worth at
  least ``MIN_PREFIX_TOKENS``);
* **prefill** and **load**: rates.py, learned per instance from the final chunks;
* **wait**: the running answers there, at the instance's decode rate, with the typical
  answer length where the request gave no limit; one that runs long is assumed to need
  half its overrun again, so a stuck instance stops looking cheap.

Costs within ``TIE`` of the cheapest are a tie, broken by round-robin among the
instances with a free slot, which is how unrelated new conversations still spread
evenly and a cold instance (its load is in its cost) is taken only when no warm one
could serve sooner. Each choice has a reason (options.py lists them).

Waiting requests are placed by the same rule whenever a slot frees (admission.py asks
``choose`` again); a request that would rather wait while another instance is free asks
to be looked at again once its expected wait has half passed.

``Planner.observe`` (an ``OllamaApi`` observer) learns from every finished exchange,
and ``Planner.remember`` takes placements other proxies recorded with their rooms.
"""

from __future__ import annotations

import bisect
import logging
import operator
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable

from olbproxy.exchange import Exchange
from olbproxy.options import Decision, Option, Ticket
from olbproxy.pool import Backend, Group, Pool
from olbproxy.prefixes import PrefixIndex, Stamp
from olbproxy.prompt import Prompt
from olbproxy.rates import Learned, Sample
from olbproxy.routing import normalise_model
from olbproxy.settings import PlacementSettings

log = logging.getLogger("olbproxy.placement")

MIN_PREFIX_TOKENS = 256  # a shorter shared prefix saves less than it would unbalance
TIE = 0.15  # costs within 15 % of the cheapest are equal
RECHECK = 0.5  # of the expected wait: when a request that chose to wait looks again
BALANCE = 1.5  # work ratio beyond which a shared prefix no longer draws new conversations


_COST = operator.attrgetter("cost")  # C-level: min() calls no Python per option


class Planner:
    """Cache-aware placement for the whole pool (see the module docstring)."""

    def __init__(self, pool: Pool, settings: PlacementSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.index = PrefixIndex()
        self.learned = Learned()
        self.tickets: dict[str, list[Ticket]] = {}
        self.waiting: dict[object, str] = {}  # a waiting request -> the instance it waits for
        self._stored: Counter[tuple[str, str]] = Counter()  # prompt tokens per instance, model
        self._cursors: dict[tuple[str, str], int] = {}
        # Seconds of work each instance has done (load, prefill, decode), and is expected
        # to do for the requests running there: equally good instances take new work
        # least busy first, so a day's work spreads evenly. Counted from the start, not
        # only once a request ends: otherwise every request of a burst went to the
        # instance that had done least so far, one after the other (the bench's 200 new
        # streams/s came to one instance at a time for a second each, and their first
        # tokens queued there).
        self.work: dict[str, float] = {}
        # Loads started ahead of need, (backend, model) -> when (see ``_ahead``).
        self.loading: dict[tuple[str, str], float] = {}
        # Starts a load of a model on an instance (the app wires it to warmup.py).
        self.load_ahead: Callable[[Backend, Group, str], None] | None = None
        # For the metrics, read at scrape time.
        self.placements: Counter[tuple[str, str]] = Counter()  # (group, reason)
        self.prefill_seconds: dict[tuple[str, str], float] = {}  # (group, backend)
        self.saved_seconds: dict[tuple[str, str], float] = {}
        self.loads_ahead: Counter[tuple[str, str]] = Counter()  # (group, backend)

    # -- for the request path --------------------------------------------------------------

    def choose(
        self,
        group: Group,
        model: str,
        prompt: Prompt | None,
        exclude: Collection[Backend] = (),
        me: object = None,
    ) -> Decision:
        """Where a request goes now, or which instance it is worth waiting for."""
        options, marked = self._options(group, model, prompt, exclude, me)
        if not options:
            return Decision(None)
        sticky = (
            next((o for o in options if o.kind == "sticky" and o.free), None) if marked else None
        )
        if sticky is not None:
            return Decision(sticky.backend, "sticky", sticky)
        best = min(options, key=_COST)
        if not best.free:
            # Waiting is cheapest: re-reading a prompt elsewhere would also take GPU time
            # from everyone else, so a free instance must be cheaper, not about as cheap.
            recheck = None
            if any(o.free for o in options):
                recheck = max(best.wait * RECHECK, 1e-3)
            self._ahead(group, model, options)
            return Decision(None, option=best, recheck=recheck)
        free = [o for o in options if o.free and o.cost <= best.cost * (1 + TIE) + 1e-9]
        chosen = self._balanced(self._next(group, model, free), options)
        reason = self._reason(chosen, options, marked)
        if log.isEnabledFor(logging.DEBUG):
            seen = ", ".join(
                f"{o.backend.label} {o.cost:.3f}s{'' if o.free else ' busy'}"
                f"{' resident' if o.resident else ' loading' if o.loading else ' cold'}"
                f"{' ' + o.kind if o.kind else ''}"
                for o in options
            )
            log.debug("%s to %s (%s): %s", model, chosen.backend.label, reason, seen)
        return Decision(chosen.backend, reason, chosen)

    def _balanced(self, chosen: Option, options: list[Option]) -> Option:
        """A new conversation drawn by a shared prefix (a system prompt, a tool list) goes
        to the least busy warm instance instead, when the holder has done more than
        ``BALANCE`` times its work: one prefill of the shared part there, and from then on
        that instance holds it too. Without this the first instance to hold a popular
        prefix would collect every conversation that uses it. Continuations stay sticky."""
        if chosen.kind != "prefix":
            return chosen
        idle = [o for o in options if o.free and o.resident and o is not chosen]
        if not idle:
            return chosen
        least = min(idle, key=lambda o: self.work.get(o.backend.label, 0.0))
        mine = self.work.get(chosen.backend.label, 0.0)
        if mine > BALANCE * self.work.get(least.backend.label, 0.0) + 1e-9:
            return least
        return chosen

    def _ahead(self, group: Group, model: str, options: list[Option]) -> None:
        """A request waits because every warm instance is full: load the model on an idle
        one for what comes next.

        The request at hand still waits where that costs least; but demand that fills
        the warm instances will come again, and a load paid once serves it for the rest
        of the instance's keep_alive. One load under way per group and model at a time.
        """
        warm = [o for o in options if o.resident]
        if self.load_ahead is None or not warm or any(o.free for o in warm):
            return
        if any(o.loading for o in options):
            return
        spare = [o for o in options if o.free and not o.resident]
        if not spare:
            return
        backend = spare[0].backend
        self.loading[backend.label, model] = time.monotonic()
        self.loads_ahead[group.name, backend.label] += 1
        log.info("group %s: every warm instance is busy; loading %s on %s", group.name,
                 model, backend.label)  # fmt: skip
        self.load_ahead(backend, group, model)

    def _options(
        self,
        group: Group,
        model: str,
        prompt: Prompt | None,
        exclude: Collection[Backend],
        me: object,
    ) -> tuple[list[Option], bool]:
        """The options, and whether any of them is marked sticky or prefix."""
        backends = [b for b in group.backends if b.healthy and b not in exclude]
        if not backends:
            return [], False
        now, wall = time.monotonic(), time.time()
        per_byte = self.learned.tokens_per_byte(model)
        holders: dict[str, int] = {}
        sticky: set[str] = set()
        # Only a boundary worth MIN_PREFIX_TOKENS can make a prefix option (a sticky one
        # is looked up by its own key): a small new chat, most requests, looks up nothing.
        worth = MIN_PREFIX_TOKENS / max(per_byte, 1e-9)  # bytes
        deep = bisect.bisect_left(prompt.sizes, worth) if prompt is not None else 0
        if prompt is not None and (deep < len(prompt.sizes) or prompt.continues is not None):
            # A recorded stamp still holds where the model was not (re)loaded since and
            # less than cache_tokens of other prompts went through the instance after it.
            epochs = {b.label: b.epochs.get(model, 0) for b in backends}
            stored, limit = self._stored, self.settings.cache_tokens

            def valid(label: str, stamp: Stamp) -> bool:
                epoch = epochs.get(label)
                if epoch is None or (stamp.epoch is not None and stamp.epoch != epoch):
                    return False  # not a candidate, or its model was (re)loaded since
                return stamp.stored is None or stored[label, model] - stamp.stored <= limit

            holders = self.index.holders(prompt, valid, deep)
            if (continued := prompt.continued) is not None:
                sticky = {b for b, s in self.index.served(continued).items() if valid(b, s)}
        total = prompt.size * per_byte if prompt is not None else 0.0
        loading, prefill_rate = self.loading, self.learned.prefill
        options = []
        for backend in backends:
            label = backend.label
            resident = backend.is_resident(model, wall)
            load = 0.0 if resident else self.learned.load(label, model)
            # Loads under way matter only where the model is not resident; walking every
            # request in flight on a warm instance was 2 % of the proxy's CPU at 1000
            # streams (py-spy, bench a1000).
            running = (
                []
                if resident
                else [t.started for t in self.tickets.get(label, ()) if t.model == model]
            )
            ahead = loading.get((label, model)) if loading else None
            if ahead is not None:
                if resident or now - ahead > 3 * load + 1.0:
                    del loading[label, model]  # done (or given up on)
                elif not resident:
                    running.append(ahead)
            if running and not resident:
                # Loading for someone else already: only what is left of that load.
                load = max(load - (now - min(running)), 0.0)
            cached, kind = 0.0, ""
            if resident and (holders or sticky):
                assert prompt is not None
                if label in sticky and prompt.continues is not None:
                    cached, kind = prompt.sizes[prompt.continues] * per_byte, "sticky"
                depth = holders.get(label)
                if depth is not None and prompt.sizes[depth] * per_byte > cached:
                    cached = prompt.sizes[depth] * per_byte
                    kind = kind or "prefix"
                if kind == "prefix" and cached < MIN_PREFIX_TOKENS:
                    cached, kind = 0.0, ""
            free = backend.has_slot(model)
            wait = 0.0 if free else self._wait(backend, model, me, now)
            prefill = (total - cached if total > cached else 0.0) / prefill_rate(label, model)
            cost = wait + load + prefill
            underway = bool(running) and not resident
            options.append(Option(backend, cost, wait, cached, kind, free, resident, underway))
        return options, bool(holders or sticky)

    def _next(self, group: Group, model: str, free: list[Option]) -> Option:
        """Among equally good options: warm before loading before cold, then the one that
        has worked least, then round-robin in the group's order (alike requests
        alternate, since each adds its work)."""
        order = group.backends
        n = max(len(order), 1)
        if len(free) == 1:
            chosen = free[0]
        else:
            cursor = self._cursors.get((group.name, model), 0)
            work = self.work
            # min() by (tier, work, distance from the cursor), written out: min() with a
            # key function cost more than the rest of the choice.
            chosen, best = free[0], (3, 0.0, n)
            for option in free:
                key = (
                    0 if option.resident else 1 if option.loading else 2,  # cold last
                    work.get(option.backend.label, 0.0),
                    (order.index(option.backend) - cursor) % n,
                )
                if key < best:
                    chosen, best = option, key
        self._cursors[group.name, model] = (order.index(chosen.backend) + 1) % n
        return chosen

    @staticmethod
    def _reason(chosen: Option, options: list[Option], marked: bool) -> str:
        if chosen.kind == "sticky":
            return "sticky"
        # When no option holds anything (most requests, a new small chat), no busy one
        # can hold more than the chosen one: no scan.
        if marked and any(o.kind and not o.free and o.cached > chosen.cached for o in options):
            return "fallback_busy"
        if chosen.kind:
            return chosen.kind
        return "resident" if chosen.resident else "cold"

    def _wait(self, backend: Backend, model: str, me: object, now: float) -> float:
        """Seconds until a slot frees for this request, ahead of others waiting there."""
        label = backend.label
        left = sorted(
            self._left(t, label, now) for t in self.tickets.get(label, ()) if t.model == model
        )
        service = self.learned.answer_tokens(model) / self.learned.decode(label, model)
        if not left:
            return service  # busy with requests we did not place (another group's)
        ahead = sum(
            1 for other, there in self.waiting.items() if there == label and other is not me
        )
        return left[ahead % len(left)] + (ahead // len(left)) * service

    def _left(self, ticket: Ticket, label: str, now: float) -> float:
        answer = ticket.answer_tokens / self.learned.decode(label, ticket.model)
        first = ticket.exchange.first_byte
        if first is not None and ticket.exchange.stream:
            spent, total = now - first, answer
        else:
            spent, total = now - ticket.started, ticket.before + answer
        return max(total - spent, 0.5 * (spent - total), 0.1 * answer)

    # -- tickets --------------------------------------------------------------------------

    def started(self, backend: Backend, exchange: Exchange, model: str, option: Option) -> Ticket:
        prompt = exchange.placed.prompt if exchange.placed is not None else None
        typical = self.learned.answer_tokens(model)
        limit = prompt.answer_tokens if prompt is not None else None
        ticket = Ticket(
            exchange,
            model,
            time.monotonic(),
            option.cost - option.wait,
            min(limit, typical) if limit else typical,
        )
        label = backend.label
        ticket.work = ticket.before + ticket.answer_tokens / self.learned.decode(label, model)
        self.work[label] = self.work.get(label, 0.0) + ticket.work
        running = self.tickets.get(label)
        if running is None:
            running = self.tickets[label] = []
        running.append(ticket)
        return ticket

    def ended(self, backend: Backend, ticket: Ticket) -> None:
        """The request left its slot: what it did is counted by ``observe`` instead."""
        running = self.tickets.get(backend.label)
        if running and ticket in running:
            running.remove(ticket)
            self.work[backend.label] = self.work.get(backend.label, 0.0) - ticket.work

    # -- learning -------------------------------------------------------------------------

    def observe(self, exchange: Exchange) -> None:
        """Learn from a finished exchange (an ``OllamaApi`` observer)."""
        placed = exchange.placed
        backend = self.pool.backend(exchange.backend)
        if placed is None or backend is None or not exchange.model:
            return
        if exchange.outcome != "done" or not 200 <= exchange.status < 400:
            return
        model = normalise_model(exchange.model)
        sample = Sample.of(exchange.counters)
        load = sample.load_seconds
        cold = load is not None and load >= self.settings.cold_load_seconds
        backend.note_answer(model, cold=cold)
        prompt = placed.prompt
        label = backend.label
        self.learned.learn(
            label,
            model,
            sample,
            cold=cold,
            expected_miss=placed.cached_tokens <= 0.1 * max(sample.prompt_tokens, 1),
            prompt_bytes=prompt.size if prompt is not None else 0,
        )
        group = exchange.group or ""
        if sample.prompt_seconds > 0:
            spent = self.prefill_seconds
            spent[group, label] = spent.get((group, label), 0.0) + sample.prompt_seconds
            full = sample.prompt_tokens / self.learned.prefill(label, model)
            saved = self.saved_seconds
            saved[group, label] = saved.get((group, label), 0.0) + max(
                full - sample.prompt_seconds, 0.0
            )
        # What the instance's caches gained: a continuation replaces its own earlier
        # prompt (a prefix of the new one), anything else adds a whole prompt.
        gained = sample.prompt_tokens + sample.answer_tokens
        if placed.reason == "sticky":
            gained -= min(int(placed.cached_tokens), sample.prompt_tokens)
        self._stored[label, model] += gained
        done = sample.prompt_seconds + sample.answer_seconds + ((load or 0.0) if cold else 0.0)
        self.work[label] = self.work.get(label, 0.0) + done
        if prompt is not None:
            epoch = backend.epochs.get(model, 0)
            self.index.record(prompt, label, epoch, self._stored[label, model])

    def remember(self, placements: Iterable[tuple[bytes, str]]) -> int:
        """Whole prompts other proxies saw served, as (exchange key, backend label)."""
        count = 0
        labels = {b.label for b in self.pool.all_backends()}
        for key, label in placements:
            if label in labels:
                self.index.remember(key, label)
                count += 1
        return count
