"""Trajectory data: the shared layout, trajectory files on disk, the replay store and its torch batches."""

from amago2.data.atomic_writer import cleanup_temp_files, save_trajectory
from amago2.data.layout import BATCH_KEYS, TOKEN_KEYS, TRAJECTORY_KEYS
from amago2.data.mixture import SourceMixture
from amago2.data.replay import SAMPLING_MODES, ReplayStore, ReplayWarning
from amago2.data.segments import SegmentWriter, split_segments, write_segments
from amago2.data.torch_batches import BatchTransform, Prefetcher, ReplayDataset, batch_rng, to_torch, transform_rng
from amago2.data.trajectory_format import FORMAT_VERSION, CorruptTrajectoryError, check_trajectory
from amago2.data.trajectory_reader import TrajectoryFile, load_trajectory, load_trajectory_with_meta, read_metadata

__all__ = [
    "BATCH_KEYS",
    "TOKEN_KEYS",
    "TRAJECTORY_KEYS",
    "FORMAT_VERSION",
    "CorruptTrajectoryError",
    "SegmentWriter",
    "TrajectoryFile",
    "check_trajectory",
    "cleanup_temp_files",
    "load_trajectory",
    "load_trajectory_with_meta",
    "read_metadata",
    "save_trajectory",
    "split_segments",
    "write_segments",
    "Prefetcher",
    "ReplayDataset",
    "ReplayStore",
    "ReplayWarning",
    "SAMPLING_MODES",
    "SourceMixture",
    "batch_rng",
    "transform_rng",
    "BatchTransform",
    "to_torch",
]
