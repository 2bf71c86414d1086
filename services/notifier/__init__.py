"""The notifier: alerts to authorities, delivered by webhook, e-mail and SMS (docs/notifier.md)."""

SERVICE = "notifier"
SOURCE = "beacon/notifier"
