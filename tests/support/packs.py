"""Rule packs for tests, made from the shipped ones."""

from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "services" / "escalation" / "packs" / "default.yaml"


def fast_pack(tmp_path: Path, ack: str = "PT4S") -> Path:
    """The default pack with P1/PA0's 15-minute acknowledgement cut to `ack`, so reminders,
    breaches and escalations happen within a test."""
    text = DEFAULT.read_text().replace("ack: PT15M", f"ack: {ack}")
    # The severity table restates the matrix's deadline: validation holds the two together.
    text = text.replace("acknowledge: PT15M", f"acknowledge: {ack}")
    text = text.replace("version: default-2026.4", "version: test-fast")
    path = tmp_path / "fast.yaml"
    path.write_text(text)
    return path
