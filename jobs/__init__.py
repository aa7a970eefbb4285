"""Job specs, the run lifecycle, the scheduler and the ``embedjob`` CLI.

Nothing else imports this package (the flow is one-way: jobs -> cluster -> embedder/storage).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
