"""Imports every service's tables so that Base.metadata (and Alembic) sees them all."""


def load_all() -> None:
    import services.common.audit  # noqa: F401
    import services.common.auth  # noqa: F401
    import services.common.outbox  # noqa: F401
    import services.common.positions  # noqa: F401
    import services.escalation.directory_admin  # noqa: F401
    import services.escalation.packs_store  # noqa: F401
    import services.escalation.store  # noqa: F401
    import services.intake.store  # noqa: F401
    import services.notifier.store  # noqa: F401
