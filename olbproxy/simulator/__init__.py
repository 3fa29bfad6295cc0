"""The Ollama simulator: a stand-in for real Ollama instances, used by tests, bench and demo.

A real aiohttp server on a real socket that speaks Ollama's wire format byte for byte
(``/work/shared/ollama-api.md``). Its public face is :class:`OllamaSimulator` and the
models it serves; ``python -m olbproxy.simulator`` runs some in a process of their own.

    server.py      OllamaSimulator: lifecycle, model state, recorded requests
    models.py      the models it serves, its faults and counters, what it received
    costs.py       the cost model (off by default): loads, slots, caches, prefill, decode
    prompt.py      a prompt as the cost model counts it: rendered, in tokens, shared prefixes
    runner.py      a loaded model's runner: its options, slots and host-RAM prompt cache
    wire.py        how a Go program writes to the wire (JSON habits, gin's texts, Host check)
    answer.py      what a model answers (Reply) and the bytes of one API family (Encoder)
    call.py        one model request (counted, timed) and the Simulator the routes see
    playback.py    how an answer is paced onto the wire: load, first token, faults
    library.py     list, show, ps, pull, push, create, copy, delete, blobs
    native.py      generate, chat
    embedding.py   embed, embeddings (and the vectors /v1/embeddings answers)
    openai.py      the /v1 layer's shape (errors, bodies); /v1 embeddings, models
    completions.py /v1/chat/completions, /v1/completions
    responses.py   /v1/responses
    anthropic.py   /v1/messages
"""

from olbproxy.simulator.models import (
    DEFAULT_MODELS,
    Faults,
    RecordedRequest,
    SimulatedModel,
    SimulatorStats,
)
from olbproxy.simulator.server import OllamaSimulator

__all__ = [
    "DEFAULT_MODELS",
    "Faults",
    "OllamaSimulator",
    "RecordedRequest",
    "SimulatedModel",
    "SimulatorStats",
]
