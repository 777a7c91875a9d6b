from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PUBLIC = SHARED / "public-data"
FIXTURES = SHARED / "open-ocpp-trace" / "fixtures"


def need(path: Path) -> Path:
    """Skip (with a visible reason) when ../shared data is not beside the checkout, as on a user's clone."""
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only beside the project's own checkouts)")
    return path
