"""Errors the user can fix; their messages say what is wrong and what to do.

The ``sage-bench`` command prints them without a traceback and exits with code 2.
"""


class UserError(Exception):
    """A problem with the user's input, files or environment, explained in the message."""


class ConfigError(UserError, ValueError):
    """A job configuration that cannot run; the message names the bad key or value and lists
    the valid choices."""
