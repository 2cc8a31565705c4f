"""The package's error type for bad input (the bottom of the import graph: imports nothing)."""


class InputError(ValueError):
    """Bad input to tfp_ae: a setting, a data file, an array or a model argument that is not
    allowed. The message names the argument, the value and what is allowed. A subclass of
    `ValueError`, so `except ValueError` still catches it; the command line prints it as
    `tfp-ae: error: ...` and exits non-zero, while errors of any other type are bugs and keep
    their traceback."""
