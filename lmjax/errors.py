"""The one error type for bad input and known failures.

The command line (lmjax/commands) catches `LmjaxError` once, at the top, and prints its
message as one line without a traceback; any other exception is a bug and keeps its
traceback. It subclasses ValueError, so code that already catches bad values keeps working.
"""


class LmjaxError(ValueError):
    """Bad input or a known failure, with a message that says what was wrong and what is allowed."""
