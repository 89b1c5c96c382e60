"""Where the scenarios' real inputs live (../shared/data beside the checkout), and
slices of them."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from retrain.data import UserSequence, load_sequences
from streamrec.errors import StreamrecError

# The one place the benchmarks and tests find their data: `shared/data` beside the
# checkout (its README says what each set is). Nothing downloads it.
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
YOOCHOOSE = DATA / "yoochoose1_64"
YOOCHOOSE_SESSIONS = DATA / "yoochoose_sessions"
TAOBAO = DATA / "taobao_stream" / "events.csv"


def shared(path: Path) -> Path:
    """`path` under DATA, or a one-line error naming where it was looked for."""
    if not path.exists():
        raise StreamrecError(
            f"the benchmark data {path.relative_to(DATA)} is not at {path}: the benchmarks "
            f"read the shared data folder beside the checkout ({DATA}; its README.md "
            "lists the sets)"
        )
    return path


def yoochoose_sessions(limit: int, skip: int = 0) -> list[UserSequence]:
    return list(islice(load_sequences(YOOCHOOSE, "srgnn"), skip, skip + limit))
