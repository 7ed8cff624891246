"""``python -m prunelab`` is the ``prunelab`` command."""

from prunelab.cli import main

if __name__ == "__main__":
    main()
