"""olbproxy: an Ollama-compatible load-balancing reverse proxy."""

__version__ = "0.1.0"
