"""The ``olbproxy`` command: serve, check-config, demo, status, launchd and the admin commands.

main.py       argument parsing; serve and check-config; every failure as one line
configfile.py which config file a command reads when it is given none
admin.py      what the admin commands share: the store the config names, the audit trail
accounts.py   user, key and token: the admin commands on accounts
audit.py      audit: who changed what, when, from where
demo.py       the seed's layout on simulated backends, no Ollama and no MongoDB needed
status.py     a running proxy's groups and backends as a table
launchd.py    launchd jobs for the Mac, generated from the config
"""

from olbproxy.cli.main import main

__all__ = ["main"]
