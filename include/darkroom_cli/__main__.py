"""``python -m darkroom_cli``: the ``darkroom`` console script without the entry point."""

from darkroom_cli.app import main

main()
