"""Keep pydicom's warnings and log records away from every log while a file is read.

pydicom reports oddities in a file (an invalid value, a wrong VR, a lying length) by
warnings and log records that quote the offending value, and that value may be a patient's
name, an ID or a date. Such text must not reach a log that leaves the site, so every read
and decode in `fedmed.client.imaging` runs inside `quiet_pydicom()`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


def _pydicom_loggers() -> list[logging.Logger]:
    # pydicom logs both through "pydicom" and through per-module children such as
    # "pydicom.pixels.decoders.base"; a disabled parent does not stop a child's records
    # from reaching the root handlers, so each one is silenced on its own.
    names = ["pydicom"] + [
        name for name in list(logging.Logger.manager.loggerDict) if name.startswith("pydicom.")
    ]
    return [logging.getLogger(name) for name in names]


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Drop every warning and every pydicom log record raised inside the block."""
    loggers = _pydicom_loggers()
    was_disabled = [logger.disabled for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.disabled = True
        try:
            yield
        finally:
            for logger, disabled in zip(loggers, was_disabled):
                logger.disabled = disabled
