"""The base class of every error a user can fix (a config, a file, a checkpoint, data).

The commands print such errors as one line and exit 2; anything else is a bug and keeps
its traceback. Each subclass also derives from the built-in type it refines (ValueError,
FileNotFoundError, ...), so library callers can catch either.
"""


class UserError(Exception):
    """Bad input, named clearly enough for the user to fix it."""


class ConfigError(UserError, ValueError):
    """A config that names something that does not exist or cannot work (one line naming
    the key). Raised by each config section's check, before any data is loaded."""


def check_choice(value, valid, what: str, *, error: type[Exception] = ConfigError,
                 prefix: str = "") -> None:  # fmt: skip
    """Raises `error("<prefix>unknown <what> <value>; valid: a, b")` unless `value` is one
    of `valid` (names: a tuple, or a table whose keys are the names).

    >>> check_choice("adam", ("adamw", "sgd"), "config.optimizer.name")
    Traceback (most recent call last):
    ...
    himl.errors.ConfigError: unknown config.optimizer.name 'adam'; valid: adamw, sgd
    """
    if value not in valid:
        raise error(f"{prefix}unknown {what} {value!r}; valid: {', '.join(valid)}")
