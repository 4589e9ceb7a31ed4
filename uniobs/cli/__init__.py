"""The `uniobs` command (click). `uniobs.cli.main:main` is the entry point."""

from uniobs.cli.main import main

__all__ = ["main"]
