"""Which failures are worth a retry, and when a transient failure is given up on."""

from __future__ import annotations

from gpu_service.outcome import gives_up, is_transient

# -- settings ------------------------------------------------------------------------------


def test_transient_errors_and_giving_up() -> None:
    assert is_transient(MemoryError()) and is_transient(OSError("disk")) and is_transient(TimeoutError())
    assert not is_transient(ValueError("shape")) and not is_transient(RuntimeError("x"))
    assert not gives_up(None, 4)  # the emulator sends no deliveryAttempt: keep retrying
    assert not gives_up(3, 4) and gives_up(4, 4) and gives_up(7, 4)
