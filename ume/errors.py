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


class UmeError(ValueError):
    """A bad input named by its message (what, where, how to fix); shown without traceback."""
