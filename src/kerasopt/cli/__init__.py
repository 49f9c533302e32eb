"""The ``kerasopt`` command line (``kerasopt demo``); see :mod:`kerasopt.cli.main`."""
