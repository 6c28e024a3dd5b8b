"""Run the command line as a module: ``python -m recsys --help``."""

from recsys.cli import main

raise SystemExit(main())
