"""``python -m sansio_signal``: the command-line interface."""

from sansio_signal.adapters.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
