"""The operator console on the admin listener (PROTOCOL.md §7, docs/operations.md).

- :mod:`appliance.console.auth`: who may use the admin listener, as pure decisions.
- :mod:`appliance.console.sessions`: the admin token (hashed) and login sessions,
  in ``STATE/console.db``.
- :mod:`appliance.console.guard`: the one check in front of every admin path.
- :mod:`appliance.console.overview`: what the pages show, read from the running relay.
- :mod:`appliance.console.board`: the bridges every process of a relay serves
  (``--workers``, several nodes), for a console any of them answers.
- :mod:`appliance.console.views`: the pages, fragments, login and replay.
- :mod:`appliance.console.cli`: ``linerelay admin-token``.

Importing this package imports nothing else: ``linerelay admin-token`` stays
light, and only the relay loads Quart and the views.
"""
