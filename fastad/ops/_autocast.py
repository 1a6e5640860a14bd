"""Kept for imports not yet moved to the public fastad.ops.autocast."""
from fastad.ops.autocast import LOW_PRECISION, float32_under_autocast  # noqa: F401
