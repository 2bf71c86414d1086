"""audit_log is append-only in the database, not only through the ORM

The ORM refuses to update or delete an audit record (services/common/audit.py); these triggers
refuse it to any SQL, so that the trail stays evidence whatever client writes to the database.

Revision ID: 7a3e9c41d2b8
Revises: 099d16a53b50
Create Date: 2026-11-29 12:00:00
"""
from alembic import op

revision = '7a3e9c41d2b8'
down_revision = '099d16a53b50'
branch_labels = None
depends_on = None

MESSAGE = "audit_log is append-only"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION '{MESSAGE}'; END $$""")
        op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
                   "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()")
        op.execute("CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()")
        return
    for action in ("update", "delete"):
        op.execute(f"CREATE TRIGGER audit_log_no_{action} BEFORE {action.upper()} ON audit_log "
                   f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION audit_log_append_only()")
        return
    for action in ("update", "delete"):
        op.execute(f"DROP TRIGGER audit_log_no_{action}")
