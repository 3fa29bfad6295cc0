"""Who is asking: credentials in, a ``Principal`` out, and the accounts behind them.

    authenticator.py   the middleware: Bearer/Basic/X-Api-Key/trusted network -> Principal
    principal.py       Principal (who, role, groups) and the request key it lives under
    accounts.py        sign-up, login and the admin operations on users and keys
    tokens.py          login tokens (JWT) and API keys
    passwords.py       bcrypt with a pre-hash, in a worker thread
    throttle.py        login attempts per username and per client address
    directory.py       the identity cache: users and keys the request path needs, in memory

Other packages import the submodule they need; this package imports nothing at import
time, so a module low in the tree (store/) may import ``auth.principal`` without pulling
the middleware in.
"""
