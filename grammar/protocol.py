"""`Protocol` as type checkers know it, and a plain base class at run time.

The package's interfaces (a store, a database, a loop's source) are structural types for the
checkers only; nothing tests them with isinstance. typing itself costs a command some 3 ms
to import, about a tenth of its start-up when served.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object

__all__ = ["Protocol"]
