"""FlowForge data foundation."""
