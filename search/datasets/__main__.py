"""`python -m search.datasets flat|split SRC OUT ...`: lay a data set out (see `search.datasets.layout`)."""

import sys

from search.datasets.layout import main

sys.exit(main())
