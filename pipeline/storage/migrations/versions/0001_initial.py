"""crypto_prices keyed by (symbol, trade_id), and the tracked_symbols registry.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crypto_prices",
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("trade_id", sa.BigInteger(), nullable=False),
        sa.Column("price", sa.Numeric(), nullable=False),
        sa.Column("quantity", sa.Numeric(), nullable=False),
        sa.Column("event_time", sa.BigInteger(), nullable=False),
        sa.Column("trade_time", sa.BigInteger(), nullable=False),
        sa.Column("is_buyer_maker", sa.Boolean(), nullable=False),
        sa.Column("processed_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "trade_id", name="crypto_prices_pkey"),
    )
    op.create_index(
        "ix_crypto_prices_symbol_trade_time",
        "crypto_prices",
        ["symbol", sa.text("trade_time DESC")],
    )
    op.create_table(
        "tracked_symbols",
        sa.Column("symbol", sa.Text(), primary_key=True),
        sa.Column(
            "added_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("source", sa.Text(), nullable=False, server_default="api"),
    )


def downgrade() -> None:
    op.drop_table("tracked_symbols")
    op.drop_index("ix_crypto_prices_symbol_trade_time", table_name="crypto_prices")
    op.drop_table("crypto_prices")
