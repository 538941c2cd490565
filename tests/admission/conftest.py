from tests.admission.services import (  # noqa: F401
    FakeClock,
    clock,
    db_engine,
    redis_client,
    redis_prefix,
    sqlite_engine,
)
