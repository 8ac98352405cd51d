"""`python -m canvasd.cli`: the same as the `canvasd` command."""

from canvasd.cli import main

main()
