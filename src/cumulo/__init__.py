"""cumulo: a self-hostable cloud compute service."""

__version__ = "0.1.0"
