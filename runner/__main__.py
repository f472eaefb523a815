"""``python -m runner`` is the ``gbatch`` command."""

from runner.cli import main

raise SystemExit(main())
