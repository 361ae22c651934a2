"""``python -m metakit``: the command line."""

from metakit.cli import main

if __name__ == "__main__":
    main()
