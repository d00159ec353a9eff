"""Caps on what a reader accepts from inside a dataset folder (the untrusted side, see docs/contracts.md).

Every reader of dataset files is bounded by these numbers: a file that exceeds one is refused with a
``DataError`` naming the file, the key and the cap, before the bytes are read or decoded. They are far
above what real datasets need (one episode of 1000 steps, 4 cameras at 224x224 is ~0.6 GB of decoded
frames but ~50 MB of PNG members) and small enough that a hostile file cannot exhaust a training node.
"""

from __future__ import annotations

KiB, MiB = 1024, 1024 * 1024

# JSON (manifest.json, stats.json, meta.json of a sample): size before parsing, nesting depth.
MAX_JSON_DEPTH = 32
MAX_MANIFEST_BYTES = 256 * MiB
MAX_STATS_BYTES = 16 * MiB
MAX_META_BYTES = 1 * MiB

# Tar shards are streamed member by member; at most one sample (episode) is held in memory.
MAX_MEMBER_BYTES = 64 * MiB  # one .npy, .json or .png member
MAX_SAMPLE_BYTES = 512 * MiB  # all members of one episode (the frames of an observation sample)
MAX_MEMBERS_PER_SAMPLE = 65536  # fields of one episode (frames: cameras x timesteps)
MAX_HEADER_EXTENSION_BYTES = 64 * KiB  # PAX header / GNU long name
# After the end-of-archive marker: zeros up to the writer's record size (tar's default is 10 KiB).
MAX_TAR_TAIL_BYTES = 1 * MiB

# Decoded content.
MAX_IMAGE_PIXELS = 4096 * 4096  # width x height read from the PNG header before decoding
# Length and dims also bound what a stream builds from an episode: it is padded to the widest embodiment
# of the registry, so one episode costs at most 100,000 x 256 x 4 bytes x 2 (state, action) = 205 MB.
MAX_EPISODE_LENGTH = 100_000  # timesteps (e.g. 100 s at 1 kHz)
MAX_DIM = 256  # state/action dims of one embodiment
MAX_CAMERAS = 16  # cameras of one embodiment / one episode
# Sanity rule for raw state/action values and statistics: real robots report radians, metres, newtons,
# gripper widths; anything beyond 1e6 in magnitude is a unit bug or corruption, and float32 normalisation
# of values near 3e38 overflows to Inf.
MAX_ABS_VALUE = 1e6
