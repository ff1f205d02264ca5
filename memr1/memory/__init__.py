"""Memory entries, the Memory Manager's operations and the per-speaker memory bank.

LanceDB is imported only when a bank is opened on disk (`MemoryBank.open`), so importing this
package stays fast.
"""

from memr1.memory.bank import AppliedOp, AppliedTurn, BankDiff, MemoryBank, ReadOnlyBankError
from memr1.memory.embed import CachedEmbedder, Embedder, HashEmbedder, MiniLMEmbedder
from memr1.memory.entry import MemoryEntry, Operation, OpKind, TurnContext
from memr1.memory.ops import ParseResult, RejectKind, parse_operations, remap_ids

__all__ = [
    "AppliedOp",
    "AppliedTurn",
    "BankDiff",
    "MemoryBank",
    "ReadOnlyBankError",
    "CachedEmbedder",
    "Embedder",
    "HashEmbedder",
    "MiniLMEmbedder",
    "MemoryEntry",
    "Operation",
    "OpKind",
    "TurnContext",
    "ParseResult",
    "RejectKind",
    "parse_operations",
    "remap_ids",
]
