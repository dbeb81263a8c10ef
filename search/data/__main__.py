"""`python -m search.data flat|split SRC OUT ...`: lay a data set out (see `search.data.layout`)."""

import sys

from search.data.layout import main

sys.exit(main())
