"""The bridge: the private half of linerelay, run by ``linerelay bridge --config FILE``.

It keeps an outbound WebSocket to the relay, stores every webhook durably
before acknowledging it, verifies the signature again, asks an
OpenAI-compatible chat API for an answer and replies through LINE's
Messaging API. docs/bridge.md describes it for owners and operators.
"""
