"""`python -m engine VERB ...`: see engine.cli."""

from engine.cli import main

raise SystemExit(main())
