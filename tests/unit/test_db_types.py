"""UTCDateTime writes SQLite's DATETIME text itself: it must be SQLAlchemy's, byte for byte,
since SQLite compares these columns as text (due times, leases, windows)."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from services.common.db import UTCDateTime

DIALECT = sqlite.dialect()
OURS = UTCDateTime().bind_processor(DIALECT)
SQLALCHEMYS = DateTime(timezone=True).dialect_impl(DIALECT).bind_processor(DIALECT)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=7)),
                                               timezone(timedelta(hours=-5, minutes=-30))])))
def test_sqlite_text_is_sqlalchemys(moment):
    assert OURS(moment) == SQLALCHEMYS(moment.astimezone(UTC))


def test_order_is_kept_as_text():
    early = datetime(2026, 11, 29, 5, 0, 0, 999_999, tzinfo=UTC)
    late = datetime(2026, 11, 29, 12, 0, 1, tzinfo=timezone(timedelta(hours=7)))  # 05:00:01 UTC
    assert OURS(early) < OURS(late)


def test_naive_and_none():
    assert OURS(None) is None
    with pytest.raises(ValueError, match="naive"):
        OURS(datetime(2026, 1, 1))
