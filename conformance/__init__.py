"""The conformance suite: prove from outside that a deployed relay meets LINE's needs.

``linerelay conformance URL --tenant-secret SECRET`` scans the relay's TLS
with sslyze, probes its webhook endpoint with signed and unsigned requests
over HTTP/1.1 and HTTP/2, and reports every check of :mod:`conformance.catalogue`
as JSON, JUnit XML, HTML and a terminal summary (PROTOCOL.md §4).
"""
