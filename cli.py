"""Launcher equal to the ``distill`` console script: ``python cli.py demo --out runs/demo``."""

from distill.cli import main

if __name__ == "__main__":
    main()
