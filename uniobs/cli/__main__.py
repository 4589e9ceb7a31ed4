"""`python -m uniobs.cli`."""

from uniobs.cli.main import main

main()
