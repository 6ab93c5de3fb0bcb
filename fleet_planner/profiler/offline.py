"""``profile offline``: engine profiles from NVIDIA AIConfigurator's performance database (optional extra)."""

from __future__ import annotations

import argparse


def register_offline(modes: argparse._SubParsersAction) -> None:
    """Added in the next step."""
