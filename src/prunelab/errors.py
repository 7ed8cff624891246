"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class PrunelabError(ValueError):
    """Bad input or an impossible request, stated in one line the user can act on."""
