async def seed() -> None:
    """Placeholder."""
