"""The linerelay load harness: simulated LINE traffic, bridges and Messaging API on Locust.

``linerelay loadtest`` (PROTOCOL.md §4) drives :mod:`loadtest.locustfile`
against a relay, then judges the run with :mod:`loadtest.verdict`. The pure
parts (target safety, event generation, pacing, tallies, the verdict, metric
parsing) have no I/O; the Locust users, the gateway server and the command
are thin layers over them.
"""
