"""The outbox relay: claims committed events, publishes them, marks them (docs/decisions/04-outbox-relay.md).

* :mod:`flowforge.relay.relay`: the :class:`~flowforge.relay.relay.Relay` loop.
* :mod:`flowforge.relay.store`: its SQL (claim, mark, probe).
* :mod:`flowforge.relay.publishers`: the publisher interface, Redis Streams and log.
* :mod:`flowforge.relay.listener`: LISTEN/NOTIFY wake-ups on a dedicated connection.
* :mod:`flowforge.relay.event`: one claimed event, between the store and a publisher.

Lag, dead letters and requeue are domain queries (:mod:`flowforge.outbox.status`):
the API's readiness probe reads them without importing the relay.
"""
