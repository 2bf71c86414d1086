"""Delivery channels by name: webhook, email, sms."""

from services.notifier.channels.base import Channel, ChannelConfig, DeliveryError, Message
from services.notifier.channels.email import EmailChannel
from services.notifier.channels.sms import SmsGatewayChannel, sms_segments
from services.notifier.channels.webhook import WebhookChannel, verify_signature

__all__ = [
    "Channel", "ChannelConfig", "DeliveryError", "EmailChannel", "Message", "SmsGatewayChannel",
    "WebhookChannel", "aclose", "build_channels", "sms_segments", "verify_signature",
]


def build_channels(config: ChannelConfig) -> dict[str, Channel]:
    """The channels this configuration enables. Bad settings fail here, at start-up."""
    channels: dict[str, Channel] = {
        "webhook": WebhookChannel(config.webhook_secret, config.webhook_timeout_s,
                                  previous=config.previous_secrets),
    }
    if config.smtp_host:
        channels["email"] = EmailChannel(
            config.smtp_host, config.smtp_port, config.mail_from,
            starttls=config.smtp_starttls, username=config.smtp_username,
            password=config.smtp_password, timeout_s=config.smtp_timeout_s,
        )
    if config.sms_gateway_url:
        if not config.sms_secret:
            raise ValueError("sms_gateway_url is set but sms_secret is empty")
        previous = config.previous_secrets if config.sms_secret == config.webhook_secret else []
        channels["sms"] = SmsGatewayChannel(
            config.sms_gateway_url, config.sms_secret, config.sms_timeout_s, previous=previous
        )
    return channels


async def aclose(channels: dict[str, Channel]) -> None:
    for channel in channels.values():
        await channel.aclose()
