"""What every ``byok`` verb shares: settings loaded once, with logging configured from them."""

from __future__ import annotations

from worker.logging_setup import configure_logging
from worker.settings import Settings, load_settings


def configured_settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings
