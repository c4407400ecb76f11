"""The `piccolo` CLI's configuration in a checkout: see flowforge/piccolo_conf.py.

Outside a checkout (an installed wheel, the image) set
``PICCOLO_CONF=flowforge.piccolo_conf`` instead.
"""

from flowforge.piccolo_conf import APP_REGISTRY, DB

__all__ = ["APP_REGISTRY", "DB"]
