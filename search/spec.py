"""What an experiment file imports: `from search.spec import Experiment, Space, ...`.

The schema itself lives in `search.experiment.spec`; this name stays the one experiment
files use, so every file written for an earlier layout still loads.
"""

from search.experiment.spec import *  # noqa: F403
from search.experiment.spec import __all__  # noqa: F401
