"""Routing is pure: model name -> group, first match wins, Ollama's name rules."""

from __future__ import annotations

import pytest

from olbproxy import routing
from olbproxy.errors import Forbidden, ModelNotFound
from olbproxy.routing import Router, normalise_model
from olbproxy.settings import GroupSettings


def g(name: str, *models: str) -> GroupSettings:
    return GroupSettings(name=name, models=models, endpoints=("http://127.0.0.1:1",))


def routed(router: Router, model: str) -> str | None:
    """The name of the group the model goes to (None: no group takes it)."""
    group = router.group_for(model)
    return None if group is None else group.name


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("llama3", "llama3:latest"),
        ("GPT-OSS:20B", "gpt-oss:20b"),
        ("hf.co/org/model", "hf.co/org/model:latest"),
        ("registry:5000/ns/model", "registry:5000/ns/model:latest"),
        ("registry:5000/ns/model:q4", "registry:5000/ns/model:q4"),
    ],
)
def test_names_normalise_like_ollama(given: str, expected: str) -> None:
    assert normalise_model(given) == expected


def test_first_matching_group_wins_and_globs_match() -> None:
    router = Router([g("20b", "gpt-oss:20b"), g("any20", "*:20b"), g("rest", "*")])
    assert routed(router, "gpt-oss:20b") == "20b"
    assert routed(router, "qwen:20b") == "any20"
    assert routed(router, "nomic-embed-text") == "rest"


def test_untagged_pattern_means_latest() -> None:
    router = Router([g("emb", "nomic-embed-text")])
    assert router.group_for("nomic-embed-text:latest") is not None
    assert router.group_for("nomic-embed-text:v1.5") is None


def test_route_refuses_unknown_and_forbidden_models() -> None:
    router = Router([g("20b", "gpt-oss:20b"), g("120b", "gpt-oss:120b")])
    with pytest.raises(ModelNotFound, match="model 'llama3' not found"):
        router.route("llama3", None)
    with pytest.raises(Forbidden, match="gpt-oss:120b"):
        router.route("gpt-oss:120b", frozenset({"20b"}))
    assert router.route("gpt-oss:20b", frozenset({"20b"})).name == "20b"


def test_overlaps_are_reported() -> None:
    router = Router([g("rest", "*"), g("20b", "gpt-oss:20b")])
    (warning,) = router.overlaps()
    assert "never routed there" in warning


def test_apply_swaps_the_table() -> None:
    router = Router([g("a", "x")])
    assert router.group_for("x") is not None
    router.apply([g("b", "y")])
    assert router.group_for("x") is None
    assert routed(router, "y") == "b"


def test_names_a_client_invents_never_grow_the_remembered_names_past_their_bound() -> None:
    for n in range(routing._NORMALISED_MAX + 500):
        assert normalise_model(f"Invented-{n}") == f"invented-{n}:latest"
    assert len(routing._NORMALISED) <= routing._NORMALISED_MAX
    # What is current stays remembered: the memo starts afresh rather than freezing.
    assert f"Invented-{routing._NORMALISED_MAX + 499}" in routing._NORMALISED
    assert normalise_model(" GPT-OSS ") == "gpt-oss:latest"
    assert normalise_model("x" * 300) == "x" * 300 + ":latest"  # too long to keep
    assert "x" * 300 not in routing._NORMALISED
