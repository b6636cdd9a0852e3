from __future__ import annotations

import errno

from mmlo.storage import storage_full


def test_full_storage_is_recognised_through_causes_and_text() -> None:
    # ENOSPC/EDQUOT anywhere in the chain, or the words Ray and Tune leave in a trial's error text
    assert storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert storage_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("Trial raised")  # noqa: B904 - a wrapper as Tune raises it
    except RuntimeError as wrapped:
        assert storage_full(wrapped)
    assert storage_full("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert not storage_full(OSError(errno.EACCES, "Permission denied"))
    assert not storage_full(RuntimeError("TrainingDiverged: meta-loss is nan at iteration 4"))
