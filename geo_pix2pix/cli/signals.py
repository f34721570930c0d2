"""SIGINT, SIGTERM and SIGHUP as clean exits: each raises :class:`Interrupted` in the main
thread, so the cleanup of temporary files runs as for Ctrl-C."""

from __future__ import annotations

import signal

__all__ = ["SIGNALS", "Interrupted", "check_interrupted", "install_signal_handlers"]

#: signal → (exit code, the word that starts the message); SIGHUP: the terminal was closed
SIGNALS = {signal.SIGINT: (130, "Interrupted"), signal.SIGTERM: (143, "Terminated")}
if hasattr(signal, "SIGHUP"):  # not on Windows
    SIGNALS[signal.SIGHUP] = (129, "Hung up")


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread on SIGINT, SIGTERM or SIGHUP so that cleanup (temporary files) runs."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


#: signals received during this command: an interruption raised where Python drops
#: exceptions (a garbage-collector callback, __del__) is raised again at the next progress update
_received: list[int] = []


def _on_signal(signum, frame):  # pragma: no cover - exercised by subprocess tests
    _received.append(signum)
    raise Interrupted(signum)


def check_interrupted() -> None:
    """Raise :class:`Interrupted` again if a signal came in (called at every progress update)."""
    if _received:
        raise Interrupted(_received[0])


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (a ``KeyboardInterrupt``): the
    same cleanup runs for all three. Called before any heavy import (torch), so that a
    signal during start-up is a clean exit too."""
    _received.clear()
    signal.signal(signal.SIGTERM, _on_signal)
    # nohup starts the program with SIGHUP ignored: keep it so.
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _on_signal)
    # A shell starts background jobs with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: handle it anyway, so `kill -INT` stops a render cleanly there too.
    signal.signal(signal.SIGINT, _on_signal)
