"""Cache-aware placement, pure: decisions from what the instances have shown, no server.

Finished exchanges are fed to the planner as the proxy would (``Planner.observe``),
with the counters of an instance that prefills 1,000 tokens/s, decodes 100 tokens/s
and counts one token per 4 bytes of prompt.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from olbproxy.exchange import Exchange, Placed
from olbproxy.options import Decision
from olbproxy.placement import Planner
from olbproxy.pool import Backend, Group, Pool
from olbproxy.prompt import Prompt, prompt_of
from olbproxy.rates import SAMPLES, Learned, Sample
from olbproxy.seat import with_pins
from olbproxy.settings import GroupSettings, PlacementSettings, Settings

M = "gpt-oss:20b"
PREFILL, DECODE = 1000.0, 100.0
LONG_SYSTEM = "Answer in Korean, cite sources, keep a friendly tone. " * 120  # ~1,600 tokens


def make(backends: int = 3, slots: int = 1, **placement: Any) -> tuple[Group, Planner]:
    group = GroupSettings(
        name="g",
        models=(M,),
        endpoints=tuple(f"http://127.0.0.1:{10000 + i}" for i in range(backends)),
        slots=slots,
    )
    pool = Pool(Settings(groups=(group,)))
    return pool.groups["g"], Planner(pool, PlacementSettings(**placement))


def warm(*backends: Backend) -> None:
    for backend in backends:
        backend.note_loaded({M: float("inf")})


def conversation(*texts: str, system: str = "") -> Prompt:
    """A chat whose messages alternate user/assistant, ending with a user message."""
    messages = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(texts):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    prompt = prompt_of("/api/chat", M, {"model": M, "messages": messages})
    assert prompt is not None
    return prompt


def finish(
    planner: Planner,
    backend: Backend,
    prompt: Prompt,
    *,
    cached: float = 0.0,
    answer: int = 100,
    load: float = 0.001,
    hit: bool = False,
) -> None:
    """An exchange that ran on ``backend`` and ended well, with its final counters."""
    tokens = prompt.size // 4
    fresh = 1 if hit else tokens - int(cached)
    exchange = Exchange(endpoint="/api/chat", model=M, group="g", stream=True)
    exchange.backend, exchange.status, exchange.outcome = backend.label, 200, "done"
    exchange.placed = Placed("test", prompt, cached)
    exchange.counters = {
        "load_duration": int(load * 1e9),
        "prompt_eval_count": tokens,
        "prompt_eval_duration": int(fresh / PREFILL * 1e9),
        "eval_count": answer,
        "eval_duration": int(answer / DECODE * 1e9),
    }
    planner.observe(exchange)


def busy(planner: Planner, decision: Decision, *, answer: float) -> Exchange:
    """Take the slot the decision chose and keep it: a running answer of ``answer`` tokens."""
    assert decision.backend is not None and decision.option is not None
    decision.backend.take(M)
    exchange = Exchange(endpoint="/api/chat", model=M, group="g", stream=True)
    ticket = planner.started(decision.backend, exchange, M, decision.option)
    ticket.answer_tokens = answer
    return exchange


def place(planner: Planner, group: Group, prompt: Prompt | None) -> Decision:
    return planner.choose(group, M, prompt)


def test_unrelated_first_turns_spread_evenly_over_warm_instances() -> None:
    group, planner = make()
    warm(*group.backends)
    seen: dict[str, int] = {}
    for i in range(9):
        prompt = conversation(f"question number {i}: " + "why? " * (20 + 7 * i))
        decision = place(planner, group, prompt)
        assert decision.backend is not None and decision.reason == "resident"
        seen[decision.backend.label] = seen.get(decision.backend.label, 0) + 1
        finish(planner, decision.backend, prompt)
    assert sorted(seen.values()) == [3, 3, 3]


def test_a_follow_up_goes_back_to_its_instance_while_it_has_a_free_slot() -> None:
    group, planner = make()
    warm(*group.backends)
    first = conversation("hi")
    where = place(planner, group, first).backend
    assert where is not None
    finish(planner, where, first)
    for i in range(2):  # others move the round-robin cursor on
        other = conversation(f"unrelated {i}")
        decision = place(planner, group, other)
        assert decision.backend is not None
        finish(planner, decision.backend, other)
    follow = place(planner, group, conversation("hi", "hello", "and then?"))
    assert (follow.backend, follow.reason) == (where, "sticky")


def test_a_long_shared_system_prompt_draws_new_conversations_to_where_it_is_cached() -> None:
    group, planner = make()
    warm(*group.backends)
    first = conversation("first", system=LONG_SYSTEM)
    holder = group.backends[1]
    finish(planner, holder, first)
    for backend in group.backends:  # every instance has done as much work
        if backend is not holder:
            finish(planner, backend, conversation("other work", system=LONG_SYSTEM[::-1]))
    decision = place(planner, group, conversation("someone else asks", system=LONG_SYSTEM))
    assert (decision.backend, decision.reason) == (holder, "prefix")
    assert decision.option is not None and decision.option.cached > 1500
    # A short shared system prompt is not worth unbalancing the group for.
    short = conversation("q", system="Be brief.")
    finish(planner, holder, short)
    chosen = [place(planner, group, conversation(f"q{i}", system="Be brief.")) for i in range(3)]
    assert {d.reason for d in chosen} == {"resident"}


def test_a_shared_prefix_stops_drawing_new_conversations_to_a_much_busier_instance() -> None:
    group, planner = make(backends=2)
    warm(*group.backends)
    holder, other = group.backends
    for i in range(3):  # the holder has done three conversations' work, the other one's
        finish(planner, holder, conversation(f"early {i}", system=LONG_SYSTEM))
    finish(planner, other, conversation("x " * 2000))
    decision = place(planner, group, conversation("a new one", system=LONG_SYSTEM))
    assert (decision.backend, decision.reason) == (other, "resident")
    # Its next turn stays where it went: continuations are never moved for balance.
    assert decision.backend is not None
    finish(planner, decision.backend, conversation("a new one", system=LONG_SYSTEM))
    follow = place(planner, group, conversation("a new one", "ok", "more", system=LONG_SYSTEM))
    assert (follow.backend, follow.reason) == (other, "sticky")


def test_a_cold_instance_gets_nothing_while_a_warm_one_has_a_free_slot() -> None:
    group, planner = make(slots=2)
    warm(group.backends[0])
    for i in range(6):
        prompt = conversation(f"one-off question {i}")
        decision = place(planner, group, prompt)
        assert (decision.backend, decision.reason) == (group.backends[0], "resident")
        assert decision.backend is not None
        finish(planner, decision.backend, prompt)


@pytest.mark.parametrize(("typical", "expected"), [(50, "wait"), (5000, "cold")])
def test_a_busy_warm_instance_is_waited_for_unless_loading_elsewhere_is_sooner(
    typical: int, expected: str
) -> None:
    group, planner = make(backends=2, slots=1)
    warm_one, cold_one = group.backends
    warm(warm_one)
    prompt = conversation("x " * 200)
    # The instances have shown a 20 s load, and answers of ``typical`` tokens.
    finish(planner, warm_one, prompt, answer=typical, load=20.0)
    busy(planner, place(planner, group, conversation("running")), answer=typical)
    decision = place(planner, group, conversation("next"))
    if expected == "wait":
        assert decision.backend is None and decision.option is not None
        assert decision.option.backend is warm_one
    else:
        assert (decision.backend, decision.reason) == (cold_one, "cold")


def test_a_request_waiting_for_full_warm_instances_has_an_idle_one_loaded_ahead() -> None:
    group, planner = make(backends=3, slots=1)
    warm_one, idle, other = group.backends
    warm(warm_one)
    asked: list[tuple[str, str]] = []
    planner.load_ahead = lambda backend, _group, model: asked.append((backend.label, model))
    finish(planner, warm_one, conversation("x " * 200), answer=50, load=20.0)
    assert asked == []  # a free warm slot: nothing to load
    busy(planner, place(planner, group, conversation("running")), answer=50)
    first = place(planner, group, conversation("next"))
    second = place(planner, group, conversation("and another"))
    assert first.backend is None and second.backend is None  # both wait for the warm one
    assert asked == [(idle.label, M)]  # one load, while it is under way no other
    assert other.label not in {label for label, _ in asked}
    # Once loaded (and seen so), the next request goes there rather than waiting.
    warm(idle)
    after = place(planner, group, conversation("later"))
    assert (after.backend, after.reason) == (idle, "resident")


@pytest.mark.parametrize(
    ("history", "running", "expected"),
    [
        # A short history is re-read elsewhere in a fraction of a second: leave.
        (40, 2000, "fallback_busy"),
        # 40,000 tokens of history (40 s to re-read) against a 1 s wait: stay.
        (40_000, 100, "wait"),
    ],
)
def test_a_busy_sticky_instance_is_left_only_when_waiting_costs_more(
    history: int, running: int, expected: str
) -> None:
    group, planner = make(backends=2, slots=1)
    warm(*group.backends)
    sticky, other = group.backends
    text = "lorem " * (history * 4 // 6)
    first = conversation(text)
    finish(planner, sticky, first, answer=running)
    finish(planner, other, conversation("teach the other instance its rates"), answer=running)
    # The sticky instance is busy with an answer of ``running`` tokens just begun.
    planner._cursors.clear()
    planner.work.clear()
    blocker = place(planner, group, conversation("blocker"))
    assert blocker.backend is sticky
    busy(planner, blocker, answer=running)
    decision = place(planner, group, conversation(text, "answer", "next question"))
    if expected == "wait":
        assert decision.backend is None and decision.option is not None
        assert decision.option.backend is sticky and decision.option.kind == "sticky"
        assert decision.recheck is not None  # the other instance is free: look again later
    else:
        assert (decision.backend, decision.reason) == (other, "fallback_busy")


def test_an_unloaded_model_takes_its_prefixes_with_it() -> None:
    group, planner = make()
    warm(*group.backends)
    first = conversation("hi")
    where = place(planner, group, first).backend
    assert where is not None
    finish(planner, where, first)
    where.note_loaded({})  # /api/ps: unloaded (keep_alive ran out)
    warm(where)  # and loaded again since: an empty cache
    follow = place(planner, group, conversation("hi", "hello", "more"))
    assert follow.reason == "resident"


def test_a_prefix_is_assumed_gone_once_the_instance_has_read_its_cache_full_since() -> None:
    group, planner = make(backends=1, cache_tokens=5_000)
    warm(*group.backends)
    (only,) = group.backends
    first = conversation("hi")
    finish(planner, only, first)
    assert place(planner, group, conversation("hi", "hello", "more")).reason == "sticky"
    finish(planner, only, conversation("other " * 4000))  # ~6,000 tokens of another prompt
    assert place(planner, group, conversation("hi", "hello", "more")).reason == "resident"


def test_placements_recorded_by_another_proxy_make_a_continuation_sticky() -> None:
    group, planner = make()
    warm(*group.backends)
    first = conversation("hi")
    assert planner.remember([(first.key, group.backends[2].label), (b"\0" * 16, "nowhere:1")])
    follow = place(planner, group, conversation("hi", "hello", "more"))
    assert (follow.backend, follow.reason) == (group.backends[2], "sticky")


def test_cache_hits_never_make_prefill_look_free() -> None:
    learned = Learned()
    miss = Sample(prompt_tokens=2000, prompt_seconds=2.0, answer_tokens=10, answer_seconds=0.1)
    hit = Sample(prompt_tokens=2000, prompt_seconds=0.01, answer_tokens=10, answer_seconds=0.1)
    for _ in range(6):
        learned.learn("a", M, miss, cold=False, expected_miss=True, prompt_bytes=8000)
    # Hits placement expected (a continuation) are not prefill samples at all; and an
    # unexpected one (llama-server's RAM cache) is far above the estimate: ignored too.
    for _ in range(10):
        learned.learn("a", M, hit, cold=False, expected_miss=False, prompt_bytes=8000)
        learned.learn("a", M, hit, cold=False, expected_miss=True, prompt_bytes=8000)
    assert learned.prefill("a", M) == pytest.approx(1000.0)
    assert learned.decode("a", M) == pytest.approx(100.0)
    assert learned.prefill("b", M) == pytest.approx(1000.0)  # borrowed from its peers
    assert learned.tokens_per_byte(M) == pytest.approx(0.25)


def test_figures_follow_new_samples_on_every_instance() -> None:
    # Figures are kept between requests: every sample must show in every instance's.
    learned = Learned()
    slow = Sample(prompt_tokens=2000, prompt_seconds=4.0, answer_tokens=50, answer_seconds=1.0)
    fast = Sample(prompt_tokens=2000, prompt_seconds=1.0, answer_tokens=50, answer_seconds=0.25)
    learned.learn("a", M, slow, cold=False, expected_miss=True, prompt_bytes=8000)
    assert (learned.prefill("b", M), learned.decode("b", M)) == (500.0, 50.0)
    for _ in range(2):
        learned.learn("a", M, fast, cold=False, expected_miss=True, prompt_bytes=8000)
    assert (learned.prefill("b", M), learned.decode("b", M)) == (2000.0, 200.0)
    for tokens in range(1, 61):  # 50 kept: 11..60
        learned.learn(
            "a", M, Sample(answer_tokens=tokens), cold=False, expected_miss=True, prompt_bytes=0
        )
    assert learned.answer_tokens(M) == pytest.approx(35.5)


@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.floats(min_value=1.0, max_value=1e6, allow_nan=False),
            st.integers(min_value=8, max_value=300),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_figures_are_the_medians_of_the_windows(answers: list[tuple[str, float, int]]) -> None:
    # The medians are kept up to date one sample at a time (rates.py): they must be what
    # statistics.median says of each instance's last SAMPLES values and of all of them.
    learned = Learned()
    windows: dict[str, list[float]] = {}
    for backend, seconds, tokens in answers:
        sample = Sample(answer_tokens=tokens, answer_seconds=seconds)
        learned.learn(backend, M, sample, cold=False, expected_miss=False, prompt_bytes=0)
        windows[backend] = [*windows.get(backend, []), tokens / seconds][-SAMPLES:]
    everyone = statistics.median([v for window in windows.values() for v in window])
    for backend, window in windows.items():
        own = statistics.median(window)
        differs = len(window) >= 5 and not 0.5 <= own / everyone <= 2.0
        assert learned.rates(backend, M).decode.value == pytest.approx(own)
        assert learned.decode(backend, M) == pytest.approx(own if differs else everyone)


def test_pinned_options_override_the_clients_and_leave_pinned_bodies_alone() -> None:
    pins = (("num_ctx", 16384),)
    assert with_pins({"model": M}, ()) is None
    assert with_pins({"model": M, "options": {"num_ctx": 16384}}, pins) is None
    assert with_pins({"model": M, "options": {"num_ctx": 4096, "seed": 1}}, pins) == {
        "model": M,
        "options": {"num_ctx": 16384, "seed": 1},
    }
    assert with_pins({"model": M}, pins) == {"model": M, "options": {"num_ctx": 16384}}


def test_a_burst_of_unrelated_requests_spreads_before_any_of_them_ends() -> None:
    # Instance 0 has done the least work so far. Nine requests arrive together, none
    # ends meanwhile: each counts from its start, so they alternate instead of all
    # going to instance 0 while it has free slots (their first tokens queued there).
    group, planner = make(slots=8)
    warm(*group.backends)
    for backend in group.backends[1:]:
        finish(planner, backend, conversation("earlier work"))
    seen = {b.label: 0 for b in group.backends}
    for i in range(9):
        decision = place(planner, group, conversation(f"burst {i}"))
        assert decision.backend is not None and decision.reason == "resident"
        busy(planner, decision, answer=100)
        seen[decision.backend.label] += 1
    # Without counting from the start: [0, 1, 8]. Instance 0 still takes one more, for
    # the work it had not done.
    assert sorted(seen.values()) == [2, 3, 4]
