"""credential-broker: short-lived, least-privilege credentials for one resource at a time."""

__version__ = "0.1.0"
