"""Package layout only (metadata: pyproject.toml).

The top-level `piccolo_migrations/` folder ships inside the wheel as the
package `flowforge.migrations`, so an installed FlowForge carries its
migrations (flowforge/piccolo_app.py finds them in a checkout and in an
install). pyproject.toml cannot combine package discovery with that mapping.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["flowforge", "flowforge.*"]), "flowforge.migrations"],
    package_dir={"flowforge.migrations": "piccolo_migrations"},
    # PEP 561: code that imports FlowForge type-checks against its records.
    package_data={"flowforge": ["py.typed"]},
)
