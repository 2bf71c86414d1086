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


def short_measure_pack(tmp_path: Path, within: str = "PT10M") -> Path:
    """The default pack with P1's 12-hour emergency measure cut to `within`, so that a report
    entered a few minutes late has missed it already (the reminders and the deadline all due)."""
    text = DEFAULT.read_text().replace("within: PT12H", f"within: {within}")
    # The severity table restates the milestone's deadline: validation holds the two together.
    text = text.replace("act: PT12H", f"act: {within}")
    text = text.replace("version: default-2026.4", "version: test-short-measure")
    path = tmp_path / "short-measure.yaml"
    path.write_text(text)
    return path
