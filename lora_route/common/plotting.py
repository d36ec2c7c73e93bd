"""PNG figures: matplotlib (the ``plot`` extra) on its file-only backend, one clear error when it is missing, and
files written beside their target and renamed onto it once complete."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lora_route.common.files import atomic_path


def pyplot(purpose: str) -> Any:
    """``matplotlib.pyplot`` on the Agg backend; ``ImportError`` naming ``purpose`` and the extra when missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"{purpose} need matplotlib: pip install 'lora_route[plot]'  or  pip install matplotlib") \
            from err
    return plt


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 110, **savefig_options: Any) -> Path:
    """Write ``fig`` as a PNG to ``path`` (temporary file + rename) and close it, also when writing fails."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as temporary:
            fig.savefig(temporary, format="png", dpi=dpi, **savefig_options)
    finally:
        pyplot("figures").close(fig)
    return path
