"""`python -m datacomp_plugins` is the same as the `datacomp-plugins` console script."""

from datacomp_plugins.cli import main

raise SystemExit(main())
