"""Alembic migrations for the keys and audit tables.

``HEAD_REVISION`` names the newest migration, so a gateway whose database is already current can
start without importing Alembic at all (about 10 MB of resident memory per process); a test
keeps it equal to Alembic's own head.
"""

HEAD_REVISION = "0001"
