"""Moved: mask readers to :mod:`ltc.masks`, the ticket format to :mod:`ltc.ticket` (kept so older
imports keep working)."""

from ltc.fileio import load_torch_data, sniff
from ltc.masks import MaskMatch, MaskSet, as_bool_masks, bool_mask, match_masks, read_masks
from ltc.ticket import (
           TICKET_FORMAT,
           TICKET_VERSION,
           check_ticket_version,
           ticket_groups,
           validate_ticket,
)

__all__ = ["TICKET_FORMAT", "TICKET_VERSION", "MaskMatch", "MaskSet", "as_bool_masks", "bool_mask",
           "check_ticket_version", "load_torch_data", "match_masks", "read_masks", "sniff", "ticket_groups",
           "validate_ticket"]
