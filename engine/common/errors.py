"""The one base class of errors a user can fix (the bottom layer, so every layer can raise it)."""


class UserInputError(ValueError):
    """Bad input, settings or files, which the user can fix.

    The message is one line that names the cause and the fix. The command line
    reports these with exit code 2; any other exception is a bug and is reported
    as one (exit code 3, or a traceback with ``--debug``).
    """
