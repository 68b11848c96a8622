"""``python -m procguard`` is the ``procguard`` command."""

from procguard.cli.main import main

raise SystemExit(main())
