"""`make serve`: uvicorn's own command line, exiting 0 when it is asked to stop.

On SIGTERM or SIGINT uvicorn finishes the requests in flight, runs the
lifespan's shutdown (the pool closes, the embedded server is released), and
then raises the same signal again with the handler it found when it started,
so that by default the process dies of it: exit -15 (143 through a shell), which
`make` reports as ``make: *** [...] Terminated`` / ``Error 143`` for a stop that
went as intended. The handler installed here is the one uvicorn finds: a stop
that was asked for ends with exit 0. Before uvicorn installs its own (imports,
the app's creation) the same handler stops the process at once, still 0.

    python -m flowforge.commands.serve flowforge.main:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stopped)
    from uvicorn.main import main as uvicorn_main

    uvicorn_main()  # click: reads sys.argv, exits with uvicorn's status


if __name__ == "__main__":
    main()
