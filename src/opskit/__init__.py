"""opskit: production services that operate themselves."""

__version__ = "0.1.0"
