from __future__ import annotations

import sqlalchemy as sa


class Repository:
    """One group of giftflow's tables on one engine."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
