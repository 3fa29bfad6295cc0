"""Rooms and messages: every chat and generate exchange recorded, never in the way.

    recording.py  what the proxy asks of persistence, whichever side records
    handoff.py    the relay's side: each finished exchange handed to the recording process
    frame.py      one finished exchange as it travels there
    overflow.py   frames on disk while the recording process cannot take them
    pace.py       whether recording waits, so that a busy relay keeps its cores
    worker.py     the recording process (python -m olbproxy.persistence.worker)
    recorder.py   the pipeline: queue -> writer -> MongoDB, spooling to disk when it cannot
    batch.py      records written to the store together, as filing planned them
    record.py     one finished exchange as persistence keeps it (and its spool line)
    history.py    what a request says about its room: history hashes, titles, new input
    filing.py     which room each record goes to, and in which position
    spool.py      the append-only file records wait in while MongoDB is away
    rooms.py      the rooms API (/api/rooms) and the ownership check of named rooms
    placements.py where other proxies placed rooms' turns, read back into the planner

Only ``store/`` knows MongoDB; this package speaks the store's protocols.
"""
