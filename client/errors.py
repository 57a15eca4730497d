"""Errors whose text is safe to show beyond the code that raised them.

A `SafeError`'s message is written by fedmed and names no site data (no paths, file
names, header values or UIDs); other exceptions are reported by type only.
"""


class SafeError(Exception):
    """An error whose message quotes no site data."""
