"""HTTP layer: app factory, dependencies, error handling, routes."""
