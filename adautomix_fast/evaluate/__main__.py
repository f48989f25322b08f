"""``python -m adautomix_fast.evaluate``: see ``adautomix_fast.evaluate.cli``."""

from .cli import cli

if __name__ == "__main__":
    cli()
