"""Batch jobs: the reaper, retention (prune) and partition maintenance; each commits per batch."""
