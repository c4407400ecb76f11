"""Schema, engine and Piccolo app of FlowForge."""
