"""The benchmark of our data and training path against the tutorials' naive one: `python -m bench`."""
