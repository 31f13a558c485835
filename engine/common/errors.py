"""The one base class of errors a user can fix, and of twentyq's one-line warnings (the bottom layer, so every
layer can raise and warn with them)."""

import warnings


class UserInputError(ValueError):
    """Bad input, settings or files, which the user can fix.

    The message is one line that names the cause and the fix. The command line
    reports these with exit code 2; any other exception is a bug and is reported
    as one (exit code 3, or a traceback with ``--debug``).
    """


class OneLineWarning(Warning):
    """A twentyq warning: printed as one line, ``twentyq: <Category>: <message>``, with no source line.

    Python's default format adds ``file:line:`` and the caller's source line,
    which means nothing to a CLI user. :func:`_format_warning` is installed as
    ``warnings.formatwarning`` and changes only subclasses of this class.
    """


_default_formatwarning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None):
    if isinstance(category, type) and issubclass(category, OneLineWarning):
        from engine.common.printable import printable  # a name in the message cannot drive the terminal

        return f"twentyq: {category.__name__}: {printable(' '.join(str(message).split()))}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


if not getattr(warnings.formatwarning, "_twentyq", False):
    _format_warning._twentyq = True  # type: ignore[attr-defined]
    warnings.formatwarning = _format_warning
