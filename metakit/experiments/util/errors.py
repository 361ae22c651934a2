"""The base of every error that is the user's to fix (no torch import: the command line catches it)."""


class MetakitError(ValueError):
    """Bad input: options, data or a run folder that cannot be used.

    Its message is one line meant for the user; the command line prints it as ``Error: MESSAGE``
    and exits with code 2.
    """


def flag(name: str) -> str:
    """The command-line flag of the option (or field) ``name``: ``flag("inner_steps") == "--inner-steps"``.

    Messages name options through it, so that each flag is spelled in one place (its field)."""
    return "--" + name.replace("_", "-")
