"""Where the scenarios' real inputs live (../shared/data beside the checkout), and
slices of them."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from retrain.data import UserSequence, load_sequences

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
YOOCHOOSE = DATA / "yoochoose1_64"
TAOBAO = DATA / "taobao_stream" / "events.csv"


def yoochoose_sessions(limit: int, skip: int = 0) -> list[UserSequence]:
    return list(islice(load_sequences(YOOCHOOSE, "srgnn"), skip, skip + limit))
