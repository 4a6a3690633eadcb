"""``python -m curvfast``: the command line (:mod:`curvfast.cli`)."""
from .cli import main

raise SystemExit(main())
