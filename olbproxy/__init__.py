"""olbproxy: an Ollama-compatible load-balancing reverse proxy.

The package reads in the order a request travels:

    cli/ -> settings.py, config.py (yamlreader.py, readiness.py) -> server.py, app.py
    edge.py        canonical path, route table, authentication, authorisation, errors
    auth/          credentials -> Principal
    body.py        the body, read once as Ollama reads it (aliases.py: the one rewrite)
    routing.py     model -> group
    api.py         thin handlers (catalog.py, management.py, instance.py beside them)
    placement.py   which instance of the group (options.py, prompt.py, rates.py),
                   admission.py, pool.py
    upstream.py    every request to an instance; relay.py and splice.py stream the answer
                   (attempt.py: what each try is given; answer.py: how it goes out;
                   lane.py, connection.py: the proxy's own keep-alive connections)
    exchange.py    the request's record, read once the answer has ended
    persistence/   rooms and messages, off the request path; store/ knows MongoDB

Beside the path: metrics.py (tallies.py, livestate.py), status.py, lag.py, access.py,
audit.py (what the operator sees), supervisor.py (background jobs), health.py and
warmup.py (the instances), ui/ (the web page) and simulator/ (Ollama's stand-in for
tests, bench and demo).
"""

__version__ = "0.1.0"
