"""``python -m image_match``: the command line."""

from .cli import main

main()
