"""The root of ume's user-facing errors.

`UmeError` marks an error caused by what the user gave ume (a file, a config, an array, a
command-line option), whose message already says what is wrong, where, and how to fix it. The
command line prints such an error as one line (`ume CMD: error: ...`, exit status 2); any other
exception is a bug (in ume or a library) and keeps its traceback.

`UmeError` subclasses ValueError, so callers that catch ValueError keep working.

Example:
    >>> raise UmeError("audio array of shape (3, 3) is ambiguous: pass (N,), (C, N) or (N, C)")
"""

from __future__ import annotations

from collections.abc import Iterable


class UmeError(ValueError):
    """A bad input named by its message (what, where, how to fix); shown without traceback."""


def name_list(names: Iterable[str], limit: int = 12) -> str:
    """The names sorted and comma-separated for an error message: at most `limit` of them,
    then how many more there are (`a, b ... (+5 more)`)."""
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
