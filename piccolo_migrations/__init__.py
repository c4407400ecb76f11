"""FlowForge's migrations; a wheel installs this folder as `flowforge.migrations`.

Only migration files belong here: Piccolo imports every other .py by bare name.
"""
