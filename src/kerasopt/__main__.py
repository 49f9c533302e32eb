"""``python -m kerasopt``: the ``kerasopt`` command line (the same as the installed script)."""

from kerasopt.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
