"""Foundation: settings, errors, logs, metrics, JSON. Imports nothing else of FlowForge."""
