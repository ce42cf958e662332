"""The error type the command line prints as one line (exit status 2) instead of a traceback."""


class UserError(Exception):
    """An error caused by the user's input; printed as one line without a traceback."""
