"""The Ollama API through the proxy: routing, merged answers, Ollama's error shapes."""

from __future__ import annotations

import asyncio
import json

from conftest import Proxy, StartProxy, StartSims, group, make_settings

from olbproxy.health import USER_AGENT
from olbproxy.simulator import OllamaSimulator

CHAT = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}], "stream": False}

Seed = tuple[Proxy, list[OllamaSimulator], list[OllamaSimulator]]


def model_requests(sim: OllamaSimulator, path: str = "/api/chat") -> int:
    return sum(1 for r in sim.requests if r.path == path)


async def test_root_answers_exactly_like_ollama(seed: Seed) -> None:
    proxy, _, _ = seed
    async with proxy.http.get(proxy.url + "/") as resp:
        assert resp.status == 200
        assert await resp.text() == "Ollama is running"
    async with proxy.http.head(proxy.url + "/") as resp:
        assert resp.status == 200


async def test_requests_spread_round_robin_inside_the_group(seed_round_robin: Seed) -> None:
    proxy, _small, large = seed_round_robin
    answers = []
    for _ in range(6):
        async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
            assert resp.status == 200
            answers.append((await resp.json())["message"]["content"].split("]")[0])
    # Each simulator names itself in its answer: s1, s2, s3, s1, s2, s3.
    assert answers == ["[s1", "[s2", "[s3", "[s1", "[s2", "[s3"]
    assert all(model_requests(s) == 0 for s in large)


async def test_a_model_never_reaches_the_other_group(seed: Seed) -> None:
    proxy, small, large = seed
    for _ in range(4):
        body = {**CHAT, "model": "gpt-oss:120b"}
        async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
            assert resp.status == 200
    assert sum(model_requests(s) for s in large) == 4
    assert all(model_requests(s) == 0 for s in small)


async def test_legacy_name_field_and_untagged_names_route(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("emb", ("embeddinggemma",), sims)))
    async with proxy.http.post(proxy.url + "/api/show", json={"name": "embeddinggemma"}) as resp:
        assert resp.status == 200
        assert "model_info" in await resp.json()


async def test_unknown_model_gets_ollama_404(seed: Seed) -> None:
    proxy, small, large = seed
    async with proxy.http.post(proxy.url + "/api/chat", json={**CHAT, "model": "llama3"}) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "model 'llama3' not found"}
    assert all(model_requests(s) == 0 for s in small + large)


async def test_unknown_model_on_v1_gets_openai_error_shape(seed: Seed) -> None:
    proxy, _, _ = seed
    body = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 404
        error = (await resp.json())["error"]
        assert error["message"] == "model 'nope' not found"
        assert error["type"] == "not_found_error"


async def test_malformed_json_is_a_400_with_ollama_shape(seed: Seed) -> None:
    proxy, _, _ = seed
    async with proxy.http.post(proxy.url + "/api/chat", data=b'{"model": "gpt-oss:20b",') as resp:
        assert resp.status == 400
        assert "invalid JSON" in (await resp.json())["error"]


async def test_missing_model_is_a_400(seed: Seed) -> None:
    proxy, _, _ = seed
    async with proxy.http.post(proxy.url + "/api/generate", json={"prompt": "x"}) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": "model is required"}


async def test_wrong_field_type_is_a_400_naming_the_field(seed: Seed) -> None:
    proxy, _, _ = seed
    body = {"model": "gpt-oss:20b", "messages": "hello"}
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        assert resp.status == 400
        assert "messages" in (await resp.json())["error"]


async def test_empty_body_is_a_400(seed: Seed) -> None:
    proxy, _, _ = seed
    async with proxy.http.post(proxy.url + "/api/chat", data=b"") as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": "missing request body"}


async def test_oversize_body_is_a_413(start_sims: StartSims, start_proxy: StartProxy) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(
        make_settings(group("20b", ("gpt-oss:20b",), sims), max_body_bytes=4096)
    )
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    async with proxy.http.post(proxy.url + "/api/chat", json=big) as resp:
        assert resp.status == 413
        assert "limit is 4096 bytes" in (await resp.json())["error"]
    # A body under the limit still goes through.
    async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 200
    assert model_requests(sims[0]) == 1


async def test_wrong_method_is_a_405(seed: Seed) -> None:
    proxy, _, _ = seed
    async with proxy.http.get(proxy.url + "/api/chat") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert "not allowed" in (await resp.json())["error"]


async def test_tags_are_merged_and_deduplicated(seed: Seed) -> None:
    proxy, _small, _large = seed
    async with proxy.http.get(proxy.url + "/api/tags") as resp:
        models = (await resp.json())["models"]
    names = [m["name"] for m in models]
    # Every simulator lists all default models, but only routed ones are shown, once each.
    assert sorted(names) == ["gpt-oss:120b", "gpt-oss:20b"]
    assert all(m["model"] == m["name"] for m in models)


async def test_a_dead_backend_leaves_out_only_its_part(seed: Seed) -> None:
    proxy, _small, large = seed
    for sim in large:
        await sim.stop()
    async with proxy.http.get(proxy.url + "/api/tags") as resp:
        assert resp.status == 200
        names = [m["name"] for m in (await resp.json())["models"]]
    assert names == ["gpt-oss:20b"]


async def test_version_is_the_lowest_among_backends(seed: Seed) -> None:
    proxy, small, large = seed
    small[1].version = "0.12.3"
    large[0].version = "0.13.0"
    async with proxy.http.get(proxy.url + "/api/version") as resp:
        assert await resp.json() == {"version": "0.12.3"}


async def test_ps_lists_loaded_models_once(seed: Seed) -> None:
    proxy, _small, _large = seed
    for _ in range(3):  # loads gpt-oss:20b on all three small backends
        async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
            assert resp.status == 200
    async with proxy.http.get(proxy.url + "/api/ps") as resp:
        models = (await resp.json())["models"]
    assert [m["name"] for m in models] == ["gpt-oss:20b"]


async def test_openai_models_list_has_openai_shape(seed: Seed) -> None:
    proxy, _, _ = seed
    async with proxy.http.get(proxy.url + "/v1/models") as resp:
        data = await resp.json()
    assert data["object"] == "list"
    assert sorted(m["id"] for m in data["data"]) == ["gpt-oss:120b", "gpt-oss:20b"]
    assert all(m["object"] == "model" and m["owned_by"] == "library" for m in data["data"])
    async with proxy.http.get(proxy.url + "/v1/models/gpt-oss:120b") as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == "gpt-oss:120b"


async def test_unload_goes_to_every_backend_of_the_group(seed: Seed) -> None:
    proxy, small, large = seed
    body = {"model": "gpt-oss:20b", "prompt": "", "keep_alive": 0}
    async with proxy.http.post(proxy.url + "/api/generate", json=body) as resp:
        assert resp.status == 200
        assert (await resp.json())["done_reason"] == "unload"
    assert [model_requests(s, "/api/generate") for s in small] == [1, 1, 1]
    assert [model_requests(s, "/api/generate") for s in large] == [0, 0]


async def test_catch_all_group_takes_unlisted_models(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    small = await start_sims(1, prefix="s", tokens_per_second=0)
    rest = await start_sims(1, prefix="r", tokens_per_second=0)
    proxy = await start_proxy(
        make_settings(group("20b", ("gpt-oss:20b",), small), group("rest", ("*",), rest))
    )
    body = {"model": "embeddinggemma", "input": "hello"}
    async with proxy.http.post(proxy.url + "/api/embed", json=body) as resp:
        assert resp.status == 200
        assert len((await resp.json())["embeddings"]) == 1
    assert model_requests(rest[0], "/api/embed") == 1
    assert model_requests(small[0], "/api/embed") == 0


async def test_unknown_paths_get_404_and_reach_no_backend(seed: Seed) -> None:
    proxy, small, large = seed
    for method, path in (("GET", "/api/not-a-route"), ("POST", "/api/signout"), ("GET", "/x")):
        async with proxy.http.request(method, proxy.url + path, json={}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"].startswith("404 page not found")
    seen = [r for sim in small + large for r in sim.requests]
    assert all(r.headers.get("User-Agent") == USER_AGENT for r in seen)  # probes only


async def test_cors_preflight_is_answered_for_allowed_origins(seed: Seed) -> None:
    proxy, _, _ = seed
    headers = {
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with proxy.http.options(proxy.url + "/api/chat", headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    async with proxy.http.options(
        proxy.url + "/api/chat", headers={**headers, "Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403
    async with proxy.http.post(
        proxy.url + "/api/chat", json=CHAT, headers={"Origin": "http://localhost:3000"}
    ) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_non_stream_answer_is_passed_byte_for_byte(seed: Seed) -> None:
    proxy, _small, _ = seed
    async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
        via_proxy = await resp.read()
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    data = json.loads(via_proxy)
    assert data["done"] is True and data["message"]["role"] == "assistant"


async def test_num_ctx_beyond_the_group_limit_is_refused(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(
        make_settings(group("20b", ("gpt-oss:20b",), sims, max_num_ctx=32768, max_num_predict=4096))
    )
    for options, field in (
        ({"num_ctx": 1_000_000}, "num_ctx"),
        ({"num_predict": -1}, "num_predict"),
    ):
        async with proxy.http.post(
            proxy.url + "/api/chat", json={**CHAT, "options": options}
        ) as resp:
            assert resp.status == 400
            assert field in (await resp.json())["error"]
    body = {
        "model": "gpt-oss:20b",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 99999,
    }
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 400
        assert "max_tokens" in (await resp.json())["error"]["message"]
    async with proxy.http.post(
        proxy.url + "/api/chat", json={**CHAT, "options": {"num_ctx": 8192}}
    ) as resp:
        assert resp.status == 200
    assert model_requests(sims[0]) == 1


async def test_a_client_sending_its_body_too_slowly_gets_408(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims), body_timeout=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))
    writer.write(
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model":'
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert b" 408 " in status_line
    writer.close()
    assert model_requests(sims[0]) == 0
