"""Django's PostgreSQL backend, with its connection pool made to fail fast and to overflow.

psycopg_pool (one pool per process) makes a thread wait up to its timeout for a connection,
and cannot tell a busy pool from a database that went away, or that came back while the
pool's reconnection backs off (1, 2, 4... s): after a PostgreSQL restart every request would
hang for the whole timeout, and a worker's heartbeat would miss its beats. Here a thread
waits a second for a pooled connection; then it opens one of its own, which fails at once
while PostgreSQL is down (a 503 `database_unavailable`, as before the pool) and works as
soon as it is back. The pool's size is therefore a soft limit: past it, a request pays for
its own connection (what every request paid before the pool), and closes it after."""

from __future__ import annotations

import psycopg_pool
from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLWrapper

FIRST_WAIT_SECONDS = 1.0
OWN_CONNECT_TIMEOUT = 3  # seconds (libpq takes whole seconds)


class DatabaseWrapper(PostgreSQLWrapper):
    def get_new_connection(self, conn_params):
        pool = self.pool
        if pool is None or "isolation_level" in self.settings_dict["OPTIONS"]:
            return super().get_new_connection(conn_params)
        pool.open()
        try:
            return pool.getconn(timeout=FIRST_WAIT_SECONDS)
        except psycopg_pool.PoolTimeout:
            pass
        # Raises (Django wraps it as OperationalError) while PostgreSQL is down.
        own = self.Database.connect(
            **{**conn_params, "autocommit": True, "connect_timeout": OWN_CONNECT_TIMEOUT}
        )
        self._configure_connection(own)  # what the pool does to each of its connections
        return own

    def _close(self):
        if self.connection is not None and getattr(self.connection, "_pool", None) is None:
            # One of its own (above): closed, not handed to a pool that never lent it.
            with self.wrap_database_errors:
                self.connection.close()
            self.connection = None
            return None
        return super()._close()
