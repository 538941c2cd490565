"""Suite-wide settings."""

from __future__ import annotations

import os

from hypothesis import settings

# In CI the property tests run a fixed, reproducible set of examples, so a red build always
# reproduces; locally they keep exploring new ones (and hypothesis keeps any failure it finds).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
