"""Test plugins: connector types installed through the ``broker.connector_types`` entry points.

This directory goes on the daemon's ``PYTHONPATH``; ``importlib.metadata`` finds
the ``*.dist-info`` next to the package, exactly as for a pip-installed plugin.
"""
