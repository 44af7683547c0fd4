"""syncd: mirrors Kantata OX time entries into PostgreSQL and pushes local changes back."""

__version__ = "0.1.0"
