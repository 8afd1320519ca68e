"""File outputs: credentials kept written to files (``[[outputs]]`` in the config file)."""
