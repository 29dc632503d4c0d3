"""Integration fixtures: the real embedding model, the real index and the real generation model.

Loaded once per test session. The models must be prepared (`make test` does it).
"""

from __future__ import annotations

import pytest

from app.config import Settings
from app.models import is_prepared
from app.pipeline import Pipeline


@pytest.fixture(scope="session")
def settings() -> Settings:
    settings = Settings()
    if not is_prepared(settings.llm_folder):
        pytest.fail(
            f"model not prepared in {settings.llm_folder}: run `make test` "
            "(or `marquee model prepare`)"
        )
    return settings


@pytest.fixture(scope="session")
def pipeline(settings: Settings) -> Pipeline:
    from app.runtime import build_pipeline

    return build_pipeline(settings)
