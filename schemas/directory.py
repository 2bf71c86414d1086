"""The authority directory's record: who a (tier, agency, administrative unit) is, and how to reach it.

Authority ids are readable and stable: `{tier}:{unit_code}:{agency}`, for example
`commune:4:child_protection`, `province:1:police`, `national:VN:child_protection`
(docs/rules.md describes the scheme).
"""

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import Contact

__all__ = ["Authority", "Contact", "authority_id"]


def authority_id(tier: str, unit_code: str, agency: str) -> str:
    return f"{tier}:{unit_code}:{agency}"


class Authority(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    tier: str
    agency: str
    unit_code: str  # ward code, synthetic district code, province code, or "VN"
    contacts: list[Contact] = Field(description="In order of preference")
    supervisors: list[str] = Field(default_factory=list, description="Supervisor chain, nearest first")
    parent: str | None = Field(None, description="Same agency, next tier up")
