from hypothesis import given
from hypothesis import strategies as st

from services.common.backoff import exponential


def test_the_wait_doubles_from_the_first_until_the_cap():
    assert [exponential(n, 0.5, 5.0) for n in range(0, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@given(st.integers(1, 10_000), st.floats(0.001, 100), st.floats(0.001, 10_000))
def test_the_wait_never_passes_the_cap_nor_shrinks_with_more_failures(n, first, cap):
    assert 0 < exponential(n, first, cap) <= cap
    assert exponential(n + 1, first, cap) >= exponential(n, first, cap)
