"""How SMTP failures are classified (the servers themselves: tests/integration/test_channels.py)."""

import aiosmtplib
import pytest

from services.notifier.channels.email import _classify


@pytest.mark.parametrize("code,retryable", [(554, False), (521, False), (421, True)])
def test_a_refused_greeting_is_permanent_for_5xx_and_retryable_for_4xx(code, retryable):
    error = _classify(aiosmtplib.SMTPConnectResponseError(code, "no service"))
    assert (error.reason, error.retryable) == (f"smtp_{code}", retryable)


def test_a_connection_that_fails_is_retryable():
    for exc in (aiosmtplib.SMTPConnectError("refused"), aiosmtplib.SMTPConnectTimeoutError("t"),
                ConnectionRefusedError()):
        assert _classify(exc).retryable
