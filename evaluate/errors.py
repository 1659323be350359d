"""The error type for bad user input, reported as one line with exit code 2."""


class InputError(Exception):
    """A problem with the user's model, data or flags, whose message states what to do next."""

    exit_code = 2
