"""The outbox relay: claims committed events, publishes them, marks them (decision 4).

* :mod:`flowforge.relay.relay`: the :class:`~flowforge.relay.relay.Relay` loop.
* :mod:`flowforge.relay.store`: its SQL (claim, mark, probe).
* :mod:`flowforge.relay.publishers`: the publisher interface, Redis Streams and log.
* :mod:`flowforge.relay.listener`: LISTEN/NOTIFY wake-ups on a dedicated connection.
* :mod:`flowforge.relay.status`: lag, dead letters, requeue.
"""
