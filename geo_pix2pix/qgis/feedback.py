"""Running a geo-pix2pix call under a QGIS ``QgsProcessingFeedback``.

:func:`run_with_feedback` is the bridge, as QGIS's own algorithms behave:

- ``progress(done, total)`` from the library moves the feedback's progress bar, and
  checks ``feedback.isCanceled()``: a cancelled run raises :class:`Canceled` from the
  callback, the library's cleanup removes its temporary files (``render`` writes to a
  temporary file renamed only at the end), and the caller sees a
  ``QgsProcessingException`` saying what was (not) written;
- the library's log lines go to ``pushInfo``/``pushDebugInfo``, its warnings
  (not georeferenced, resampled…) to ``pushWarning``;
- a :class:`~geo_pix2pix.errors.GeoPix2PixError` becomes a ``QgsProcessingException``
  with the library's one-line message, which Processing shows as the error.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TypeVar

from qgis.core import QgsProcessingException, QgsProcessingFeedback

from ..errors import GeoPix2PixError

__all__ = ["Canceled", "feedback_progress", "run_with_feedback"]

T = TypeVar("T")


class Canceled(Exception):
    """Raised from the progress callback when the user cancelled the run.

    Not a :class:`GeoPix2PixError` (nothing the user did is wrong), and not a
    ``KeyboardInterrupt``, which QGIS's Python console would treat as its own.
    """


def feedback_progress(feedback: QgsProcessingFeedback | None) -> Callable[[int, int], None]:
    """A library ``progress(done, total)`` callback driving ``feedback``."""

    def progress(done: int, total: int) -> None:
        if feedback is None:
            return
        if feedback.isCanceled():
            raise Canceled()
        if total > 0:
            feedback.setProgress(100.0 * min(done, total) / total)

    return progress


class _FeedbackLogHandler(logging.Handler):
    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        super().__init__(logging.INFO)
        self.feedback = feedback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if record.levelno >= logging.WARNING:
                self.feedback.pushWarning(msg)
            else:
                self.feedback.pushInfo(msg)
        except Exception:  # a log line must never break the run
            self.handleError(record)


def run_with_feedback(fn: Callable[..., T], feedback: QgsProcessingFeedback | None, canceled: str,
                      processing: bool = True, **kwargs) -> T:
    """Call ``fn(progress=..., **kwargs)`` under ``feedback``.

    ``canceled`` is the message of the exception raised when the user cancels: it says
    what was (not) written. With ``processing`` (in an algorithm) errors and cancellation
    become ``QgsProcessingException``; without (the console helper) the library's own
    exceptions and :class:`Canceled` come through.
    """
    logger = logging.getLogger("geo_pix2pix")
    handler = _FeedbackLogHandler(feedback) if feedback is not None else None
    old_level = logger.level
    if handler is not None:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return fn(progress=feedback_progress(feedback), **kwargs)
            finally:
                if feedback is not None:
                    for w in caught:
                        feedback.pushWarning(f"{w.category.__name__}: {w.message}")
    except Canceled:
        if processing:
            raise QgsProcessingException(canceled) from None
        raise Canceled(canceled) from None
    except GeoPix2PixError as exc:
        if processing:
            raise QgsProcessingException(str(exc)) from exc
        raise
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
