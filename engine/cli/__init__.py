"""The ``twentyq`` command line, one module per command family. Nothing imports this package."""

from engine.cli.app import main

__all__ = ["main"]
