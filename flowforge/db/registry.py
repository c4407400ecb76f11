"""The Piccolo apps FlowForge runs with (their migrations run with `forwards all`)."""

from piccolo.conf.apps import AppRegistry

APP_REGISTRY = AppRegistry(
    apps=[
        "flowforge.db.piccolo_app",
        # Admin logins and their sessions, for Piccolo Admin.
        "piccolo.apps.user.piccolo_app",
        "piccolo_api.session_auth.piccolo_app",
    ]
)
