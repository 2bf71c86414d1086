"""Rule packs for tests, made from the shipped ones."""

from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "services" / "escalation" / "packs" / "default.yaml"


def _variant(tmp_path: Path, name: str, version: str, changes: dict[str, str]) -> Path:
    """The default pack under `version`, each key of `changes` replaced by its value."""
    text = DEFAULT.read_text().replace("version: default-2026.5", f"version: {version}")
    for old, new in changes.items():
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def fast_pack(tmp_path: Path, ack: str = "PT4S") -> Path:
    """The default pack with P1/PA0's 15-minute acknowledgement cut to `ack`, so reminders,
    breaches and escalations happen within a test. The severity table restates the matrix's
    deadline: validation holds the two together."""
    return _variant(tmp_path, "fast", "test-fast",
                    {"ack: PT15M": f"ack: {ack}", "acknowledge: PT15M": f"acknowledge: {ack}"})


def short_measure_pack(tmp_path: Path, within: str = "PT10M") -> Path:
    """The default pack with P1's 12-hour emergency measure cut to `within`, so that a report
    entered a few minutes late has missed it already (the reminders and the deadline all due).
    The severity table restates the milestone's deadline: validation holds the two together."""
    return _variant(tmp_path, "short-measure", "test-short-measure",
                    {"within: PT12H": f"within: {within}", "act: PT12H": f"act: {within}"})
