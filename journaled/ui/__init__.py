"""The web dashboard (``journaled ui``): server-rendered pages over the same ``Client``
as the CLI; ``server`` is the HTTP side, ``pages`` the HTML, ``svg`` the charts."""

from .server import Dashboard, make_server

__all__ = ["Dashboard", "make_server"]
