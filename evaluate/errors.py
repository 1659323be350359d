"""The error type for bad user input, reported as one line with exit code 2."""


class InputError(Exception):
    """A problem with the user's model, data or flags; the message says what to do."""

    exit_code = 2
