"""Datasets: torch-free records and readers (SPair-71k, PF-PASCAL, PF-WILLOW, AP-10K, synthetic warps).

The torch part (:mod:`simplematch.data.dataset`: ``PairDataset``, ``collate_pairs``) is imported explicitly
so that the runtime and the readers stay usable without torch.
"""

from simplematch.data.load import THRESHOLD_KIND, load_records
from simplematch.data.records import PairRecord, pck_threshold
from simplematch.data.stats import keypoint_fusion_stats

__all__ = ["THRESHOLD_KIND", "PairRecord", "keypoint_fusion_stats", "load_records", "pck_threshold"]
