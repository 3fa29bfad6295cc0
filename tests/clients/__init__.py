"""Client conformance: the real client libraries people point at olbproxy, pinned.

Each module drives one library (``ollama`` for Python and for JavaScript, the OpenAI and
Anthropic SDKs, LangChain, LlamaIndex) against a proxy with authentication and recording
on, in front of simulated Ollama instances, and asserts what a user of that library sees:
the answer, a stream in several pieces, usage counts, and the library's own error class
and message for 401, 403, 404 and 503. The pins live in ``requirements.txt`` (Python) and
``js/package-lock.json`` (Node); ``make test`` installs both.

A package (this file) so that its ``conftest`` is ``clients.conftest`` and does not shadow
the suite-wide ``conftest`` module the other tests import from.
"""
