"""The benchmarks (`bench/`) and the tests are not installed: they run from a
checkout of the repository, beside the shared data. A command that needs them
puts the checkout on the import path, or says in one line why it cannot."""

from __future__ import annotations

import sys
from pathlib import Path

from streamrec.errors import StreamrecError

# With `make venv` (an editable install) this is the checkout's root.
ROOT = Path(__file__).resolve().parents[1]


def bench_on_path() -> None:
    if not (ROOT / "bench" / "__init__.py").is_file():
        raise StreamrecError(
            "the benchmarks run from a checkout of streamrec (bench/ is not installed): "
            "clone the repository and run `make venv` there"
        )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
