"""The command line: a thin Typer shell over the library (``prunelab`` / ``python -m prunelab``)."""

from prunelab.cli.app import app, main

__all__ = ["app", "main"]
