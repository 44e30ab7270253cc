"""`python -m imgpipe` is the `imgpipe` command."""

from imgpipe.cli import entry_point

entry_point()
