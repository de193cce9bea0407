"""The one exception type the CLI turns into a one-line message and exit code 2."""


class GgprecError(Exception):
    """Bad input or an impossible request: the message is shown to the user as it is."""
