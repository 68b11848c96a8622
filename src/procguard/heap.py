"""Give a long-lived process's start-up garbage back to the operating system.

Start-up (parsing the command line and the configuration, importing,
spawning) leaves freed heap pages behind, and glibc keeps them in the
process unless asked (``malloc_trim``). A supervisor or runner then lives
for days at that high-water mark; one call once start-up is over brings it
down to what the process really holds.
"""

from __future__ import annotations


def release_memory() -> None:
    """Collect garbage, then return freed heap pages to the OS (glibc; a no-op elsewhere)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
