"""`python -m modelsmith` is the `modelsmith` command."""

from modelsmith.cli import main

main()
