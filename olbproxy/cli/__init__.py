"""The ``olbproxy`` command: serve, check-config, demo, status, launchd and the admin commands.

main.py       argument parsing; serve and check-config; one line per configuration error
admin.py      user, key and token: accounts in the store the config names
demo.py       the seed's layout on simulated backends, no Ollama and no MongoDB needed
status.py     a running proxy's groups and backends as a table
launchd.py    launchd jobs for the Mac, generated from the config
"""

from olbproxy.cli.main import main

__all__ = ["main"]
