"""The transactional outbox: its one writer, the event contract, its status."""
