"""The simulator's nouns: the models it serves, the faults tests switch on, what it saw.

Apart from the server (server.py) so that the route modules can name them without
importing the server, which imports them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from multidict import CIMultiDict


@dataclass(frozen=True)
class SimulatedModel:
    """One model the simulator lists and serves; the defaults describe gpt-oss:20b."""

    name: str
    family: str = "gptoss"
    parameter_size: str = "20.9B"
    quantization_level: str = "MXFP4"
    size: int = 13_780_173_839
    context_length: int = 131072
    embedding: bool = False  # embedding-only: embed works, chat and generate answer 400
    thinking: bool = True  # supports ``think``
    embedding_length: int = 2880  # dimension of the vectors /api/embed returns

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def capabilities(self) -> list[str]:
        if self.embedding:
            return ["embedding"]
        return ["completion", "tools", "thinking"] if self.thinking else ["completion", "tools"]


DEFAULT_MODELS: tuple[SimulatedModel, ...] = (
    SimulatedModel("gpt-oss:20b"),
    SimulatedModel("gpt-oss:120b", parameter_size="116.8B", size=65_369_818_941),
    SimulatedModel(
        "embeddinggemma:latest",
        family="gemma3",
        parameter_size="307.58M",
        quantization_level="BF16",
        size=621_875_417,
        context_length=2048,
        embedding=True,
        thinking=False,
        embedding_length=768,
    ),
)


@dataclass
class Faults:
    """Switches tests flip at run time; each applies to model requests (inference routes).

    The ``*_after_tokens`` faults are read when a request is admitted, so flipping them does
    not change a stream already under way. A value of 0 acts before the first byte, where
    Ollama still answers with a real status (``fail_after_tokens=0`` gives a 500).
    """

    busy: int = 0  # answer the next N model requests with Ollama's 503; -1 = always
    fail_before: str | None = None  # answer model requests with 500 {"error": fail_before}
    fail_after_tokens: int | None = None  # N tokens, then an {"error"} line, no done:true
    drop_after_tokens: int | None = None  # N tokens, then abort the TCP connection
    hang: bool = False  # never answer (until the client goes away)
    stall_after_tokens: int | None = None  # N tokens, then silence (until the client goes away)
    # The final chunk written in this many pieces, 20 ms apart, as a slow link delivers a
    # long last line (generate's carries ``context``) in several reads.
    split_final: int = 1


@dataclass
class RecordedRequest:
    """A request as the simulator received it (blob uploads keep no body: they stream)."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]  # names in the case received; lookups ignore case
    body: bytes
    received_at: float  # time.monotonic()
    target: str = ""  # the request target exactly as received (path and query, undecoded)
    version: str = "1.1"  # the request's HTTP version


@dataclass
class SimulatorStats:
    """Counters of model requests (inference routes), updated as they happen."""

    active: int = 0  # in progress now
    max_active: int = 0
    completed: int = 0  # answered in full (an error answered on purpose counts too)
    cancelled: int = 0  # the client went away before the answer was complete
    dropped: int = 0  # the simulator aborted the connection (Faults.drop_after_tokens)
    tokens_sent: int = 0  # tokens written to clients (added when each answer ends)
