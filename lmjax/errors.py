"""The one error type for bad input and known failures.

The command line (lmjax/commands) catches `LmjaxError` once, at the top, and prints its
message as one line without a traceback; any other exception is a bug and keeps its
traceback. It subclasses ValueError, so code that already catches bad values keeps working.
The two path errors also subclass the OSError that code catching file problems expects.
"""


class LmjaxError(ValueError):
    """Bad input or a known failure, with a message that says what was wrong and what is allowed."""


class MissingFileError(LmjaxError, FileNotFoundError):
    """A file or directory the input names does not exist (or is not the kind expected)."""


class PathExistsError(LmjaxError, FileExistsError):
    """A path that would be written already holds something that must not be overwritten."""
