"""Streaming training windows out of WebDataset shards, for one dataset or a weighted mixture.

Design (the batch keys: docs/contracts.md):

* **Two views.** The trajectory view reads ``traj-*.tar`` only; it never opens an ``obs-*.tar`` and never
  decodes a PNG. The observation view reads ``obs-*.tar`` and decodes only the frames of the sampled
  timesteps. Fields are decoded with :mod:`actionprior.data.schema` (``allow_pickle=False``); WebDataset's
  ``.decode()`` is never used because its default handlers can unpickle.
* **Reading.** Shards are plain WebDataset tars (written by ``wds.TarWriter``) read by
  :mod:`actionprior.data.tario`, which groups members into samples with WebDataset's key rule but parses
  headers ~10x faster than ``tarfile`` (an observation shard has one member per frame). Shard resampling
  is done here rather than by ``wds.WebDataset(resampled=True, shardshuffle=...)`` so that the seeds
  (seed, epoch, rank, worker) and the per-split shard lists are under our control.
* **No hangs under DDP.** Every (rank, worker) draws shards *with replacement* from the full shard list
  and a loader yields a fixed number of batches per epoch (:class:`StreamLoader`), so ranks always run
  the same number of steps whatever the shard count.
* **Throughput.** An episode is decoded, normalised and padded once and then sits in a pool from which
  windows are drawn at random (several per episode); a window is a slice of the padded arrays, a batch
  two ``np.stack`` calls. Decoded trajectory shards are cached per worker. Workers return numpy batches
  (pickled through the pipe) rather than tensors (one shared-memory file descriptor each: 16 ms a batch).
* **Mixtures.** Each batch element picks its dataset with probability proportional to the dataset weight.
* **Splits.** An episode belongs to the validation split when a stable hash of its key falls below
  ``val_fraction``; the manifest's episode keys tell which shards hold episodes of each split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from actionprior.data.batch import BatchBuilder
from actionprior.data.images import ImageFit
from actionprior.data.limits import MAX_ABS_VALUE
from actionprior.data.normalization import Normalizer
from actionprior.data.schema import DataError, frame_field
from actionprior.data.shards import ShardSource, View, camera_frames, decode_sample, iter_checked
from actionprior.data.splits import Split, in_split
from actionprior.data.verify import DatasetMemory
from actionprior.data.video_frames import FrameCache, VideoSettings, video_field
from actionprior.data.windowing import PaddedEpisode
from actionprior.embodiments import EmbodimentRegistry


class _PoolEpisode:
    """A decoded, normalised, padded episode waiting in a sampling pool."""

    __slots__ = (
        "padded",
        "embodiment_id",
        "key",
        "where",
        "instruction",
        "task",
        "timesteps",
        "images",
        "camera_mask",
        "frame_source",
        "video",
    )

    def __init__(self, padded: PaddedEpisode, embodiment_id: int, key: str, where: str, meta: dict[str, Any]):
        self.padded = padded
        self.embodiment_id = embodiment_id
        self.key = key
        self.where = where
        self.instruction: str = meta["instruction"]
        self.task: str = meta["task"]
        # Observation view only: the timesteps drawn for this episode and their decoded frames.
        self.timesteps: np.ndarray | None = None
        self.images: np.ndarray | None = None  # uint8 [k, C, 3, h, w]
        self.camera_mask: np.ndarray | None = None  # bool [C]
        # Until the episode is first picked for a batch: the PNG bytes of just those frames (or the video
        # members of its cameras), and its meta.
        self.frame_source: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.video: VideoSettings | None = None  # the dataset's settings when its frames are stored as video

    @property
    def nbytes(self) -> int:
        return self.padded.state.nbytes + self.padded.action.nbytes + 512


class WindowStream(IterableDataset):
    """An endless stream of collated batches (dicts of numpy arrays, see docs/contracts.md).

    Each (rank, worker) keeps, per dataset, a pool of ``shuffle_buffer / windows_per_episode`` decoded
    episodes (the shuffle buffer holds ``shuffle_buffer`` windows' worth of episodes). Every batch
    element picks a dataset (by mixture weight), a random pool episode and a uniformly random time ``t``
    in it; on average every ``windows_per_episode`` windows drawn from a pool, one pool episode is replaced
    by the next one of the stream. In the trajectory view decoded episodes of whole shards are also
    cached (up to ``cache_mb`` per worker) so that a resampled shard is not parsed again. In the
    observation view ``windows_per_episode`` times are drawn when an episode enters the pool and only
    their frames are decoded; windows of that episode are then cut at those times.

    ``normalizer=None`` streams raw values (used to check round trips). Wrap it in a
    :class:`StreamLoader` for a fixed number of batches per epoch.
    """

    def __init__(
        self,
        sources: Sequence[ShardSource],
        registry: EmbodimentRegistry,
        normalizer: Normalizer | None,
        *,
        view: View = "trajectory",
        split: Split = "train",
        val_fraction: float = 0.0,
        chunk_len: int = 8,
        history_len: int = 8,
        batch_size: int = 64,
        windows_per_episode: int = 4,
        shuffle_buffer: int = 512,
        cache_mb: float = 256.0,
        seed: int = 0,
        camera_names: Sequence[str] | None = None,
        image_size: int | None = None,
        image_fit: ImageFit | None = None,
        frame_cache_mb: float = 64.0,
        frame_cache_entries: int = 4096,
    ):
        super().__init__()
        if not sources:
            raise DataError("a WindowStream needs at least one dataset")
        for src in sources:
            if not src.urls:
                raise DataError(f"{src.directory}: no shard holds an episode of the '{split}' split")
            if src.weight <= 0:
                raise DataError(f"{src.directory}: mixture weight must be positive, got {src.weight}")
        if view not in ("trajectory", "observation"):
            raise ValueError(f"view must be 'trajectory' or 'observation', got '{view}'")
        if (
            chunk_len < 1
            or history_len < 0
            or batch_size < 1
            or windows_per_episode < 1
            or shuffle_buffer < 1
        ):
            raise ValueError(
                "chunk_len, batch_size, windows_per_episode and shuffle_buffer must be >= 1, history_len >= 0"
            )
        self.sources = list(sources)
        self.registry = registry
        self.normalizer = normalizer
        self.view: View = view
        self.split: Split = split
        self.val_fraction = val_fraction
        self.chunk_len = chunk_len
        self.history_len = history_len
        self.batch_size = batch_size
        self.windows_per_episode = windows_per_episode
        self.shuffle_buffer = shuffle_buffer
        self.cache_bytes = int(cache_mb * 2**20) if view == "trajectory" else 0
        self.seed = seed
        self.camera_names = list(camera_names) if camera_names is not None else default_camera_names(registry)
        self.image_size = image_size
        weights = np.array([s.weight for s in self.sources], dtype=np.float64)
        self.probs = weights / weights.sum()
        # The batch contract, shared with inference (actionprior.inference.policy); it fits the frames to
        # image_size (image_fit: with the datasets' recorded resize mode).
        fit = image_fit or (ImageFit(image_size) if image_size else None)
        self.batches = BatchBuilder(registry, normalizer, chunk_len, history_len, self.camera_names, fit)
        # Set by StreamLoader in the main process before workers start (workers get a copy).
        self.epoch = 0
        self.rank = 0
        self.world_size = 1
        # Batches of this (epoch, rank) stream already consumed, counted over all workers together: a new
        # iterator starts right after them (resuming), see :meth:`_worker_start`.
        self.start_batch = 0
        # Per dataset: frame sizes seen, and whether skipped members were already reported (per worker).
        self._memory: dict[str, DatasetMemory] = {}
        # Decoded video frames, per worker (each worker has its own copy of this stream): see video_frames.
        self.frame_cache = FrameCache(int(frame_cache_mb * 2**20), frame_cache_entries)

    # -- episodes ------------------------------------------------------------------------------------
    def _decode(
        self,
        sample: dict[str, Any],
        rng: np.random.Generator,
        decoded: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None = None,
        source: ShardSource | None = None,
    ) -> _PoolEpisode:
        state, action, meta = decoded if decoded is not None else decode_sample(sample, self.registry)
        name = meta["embodiment"]
        padded = self.batches.pad(name, state, action)
        # Inf in a shard, or a value the statistics blow up to Inf, would reach the loss silently.
        # (``not max <= cap`` is also true for NaN.)
        for label, arr in (("state", padded.state), ("action", padded.action)):
            if not float(np.abs(arr).max(initial=0.0)) <= MAX_ABS_VALUE:
                raise DataError(
                    f"{sample.get('__url__', '?')}:{sample['__key__']}: {label} has NaN/Inf or values beyond "
                    f"+-{MAX_ABS_VALUE:g} after normalisation; run `actionprior data check` on the dataset"
                )
        where = f"{sample.get('__url__', '?')}:{sample['__key__']}"
        episode = _PoolEpisode(padded, self.registry.id_of(name), sample["__key__"], where, meta)
        if self.view == "observation":
            episode.timesteps = rng.integers(padded.length, size=self.windows_per_episode)
            # Frames are decoded when the episode is first picked for a batch (_ensure_frames), not here:
            # an episode replaced in the pool before it is picked, or entering the pool while a resumed
            # stream skips batches, then costs no decoding. Only its frames' bytes are kept.
            episode.video = source.video if source is not None else None
            if episode.video is not None:
                wanted = {video_field(cam) for cam in self.camera_names}
            else:
                wanted = {frame_field(cam, int(t)) for cam in self.camera_names for t in episode.timesteps}
            frames = {k: v for k, v in sample.items() if k in wanted or k.startswith("__")}
            episode.frame_source = (frames, meta)
        return episode

    def _ensure_frames(self, episode: _PoolEpisode) -> None:
        if episode.images is None and episode.frame_source is not None:
            sample, meta = episode.frame_source
            assert episode.timesteps is not None
            episode.images, episode.camera_mask = self._decode_frames(
                sample, meta, episode.timesteps, episode.where, episode.video
            )
            episode.frame_source = None

    def _decode_frames(
        self,
        sample: dict[str, Any],
        meta: dict[str, Any],
        timesteps: np.ndarray,
        where: str,
        video: VideoSettings | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        present = set(meta.get("cameras", []))
        mask = np.array([cam in present for cam in self.camera_names], dtype=bool)
        if not mask.any():
            raise DataError(
                f"{where}: episode has none of the cameras {self.camera_names} (has {sorted(present)})"
            )
        # All sampled steps of a camera at once: a video member is then opened once and decoded forward.
        per_camera = {
            cam: camera_frames(sample, cam, timesteps, int(meta["length"]), where, video, self.frame_cache)
            for cam in self.camera_names
            if cam in present
        }
        steps = []
        for i in range(len(timesteps)):
            frames = {cam: decoded[i] for cam, decoded in per_camera.items()}
            try:
                steps.append(self.batches.cameras(frames)[0])
            except ValueError as exc:
                raise DataError(
                    f"{where}: {exc}; set data.image_size to resize them to a common size"
                ) from None
        return np.stack(steps), mask

    def read_shard(self, source: ShardSource, index: int, rng: np.random.Generator) -> list[_PoolEpisode]:
        """The decoded episodes of the split in shard file ``index`` of ``source``, read whole and checked
        (:func:`~actionprior.data.shards.iter_checked`: its checksum, and what ``data check`` checks) before
        any of them is returned: a damaged shard never reaches a pool."""
        memory = self._memory.setdefault(source.directory, DatasetMemory())
        observation = self.view == "observation"

        def wanted(key: str) -> bool:
            return in_split(key, self.split, self.val_fraction)

        return [
            self._decode(sample, rng, (state, action, meta), source)
            for sample, state, action, meta in iter_checked(
                source, source.files[index], self.registry, memory, observation, wanted
            )
        ]

    def _episodes(self, source: ShardSource, rng: np.random.Generator, cache: dict) -> Iterator[_PoolEpisode]:
        """Decoded episodes of the split from shards drawn with replacement, forever."""
        barren = 0
        while True:
            index = int(rng.integers(len(source.urls)))
            url = source.urls[index]
            if url in cache:
                episodes = cache[url]
            else:
                episodes = self.read_shard(source, index, rng)
                size = sum(e.nbytes for e in episodes)
                # No eviction: once full, the cached shards stay; the others are read from disk.
                if cache.get("__bytes__", 0) + size <= self.cache_bytes:
                    cache[url] = episodes
                    cache["__bytes__"] = cache.get("__bytes__", 0) + size
            barren = 0 if episodes else barren + 1
            if barren > 4 * len(source.urls) + 10:  # the manifest promised episodes the shards lack
                raise DataError(
                    f"{source.directory}: shards listed for the '{self.split}' split yield no such episode; "
                    "the manifest disagrees with the shards (run `actionprior data check`)"
                )
            yield from episodes

    # -- batching ------------------------------------------------------------------------------------
    def _images(self, picks: Sequence[_PoolEpisode], slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        by_shape = {ep.images.shape[2:]: ep.where for ep in picks}  # type: ignore[union-attr]
        if len(by_shape) > 1:
            examples = ", ".join(f"{h}x{w} in {where}" for (h, w), where in sorted(by_shape.items())[:2])
            raise DataError(
                f"frames of different sizes in one batch ({examples}: datasets recorded at different "
                "resolutions); set data.image_size to resize them to a common size"
            )
        images = np.stack([ep.images[j] for ep, j in zip(picks, slots, strict=True)])  # type: ignore[index]
        masks = np.stack([ep.camera_mask for ep in picks])  # type: ignore[misc]
        return images, masks

    def collate(
        self, picks: Sequence[_PoolEpisode], starts: np.ndarray, slots: np.ndarray | None = None
    ) -> dict[str, Any]:
        """The contract's batch, as numpy arrays, for windows of ``picks`` at times ``starts`` (observation
        view: at ``ep.timesteps[slot]``, whose frames are ``ep.images[slot]``). See :func:`to_torch`."""
        ids = np.array([ep.embodiment_id for ep in picks], dtype=np.int64)
        batch = self.batches.windows([ep.padded for ep in picks], ids, starts)
        # Provenance (not model inputs): which episode and time each window was cut at.
        batch["timestep"] = np.asarray(starts, dtype=np.int64)
        batch["episode_key"] = [ep.key for ep in picks]
        if self.view == "observation":
            assert slots is not None
            for ep in picks:
                self._ensure_frames(ep)
            batch["images"], batch["camera_mask"] = self._images(picks, slots)
            batch["instruction"] = [ep.instruction for ep in picks]
            batch["task"] = [ep.task for ep in picks]
        return batch

    def _worker_start(self) -> tuple[int, int]:
        """(logical worker, batches it skips) for this process, so that iterating from ``start_batch`` on
        continues the stream that one iterator from 0 would have produced.

        A DataLoader takes batch ``i`` from worker ``i % W`` (round robin, starting at worker 0 with every
        new iterator). Batch ``start_batch`` must come next, so worker ``w`` plays the part of worker
        ``(w + start_batch) % W`` of the original run (its seed) and first skips the batches that worker
        had already delivered.
        """
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        logical = (worker + self.start_batch) % workers
        skip = max(0, -(-(self.start_batch - logical) // workers))  # #{i < start_batch : i % W == logical}
        return logical, skip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, skip = self._worker_start()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        cache: dict = {}
        streams = [self._episodes(src, rng.spawn(1)[0], cache) for src in self.sources]
        # A pool larger than the dataset would only hold duplicates (and cost start-up time).
        pool = max(1, self.shuffle_buffer // self.windows_per_episode)
        sizes = [min(pool, src.num_episodes) for src in self.sources]
        pools = [[next(stream) for _ in range(n)] for stream, n in zip(streams, sizes, strict=True)]
        debt = np.zeros(len(streams))  # episodes owed to each pool for the windows drawn from it
        while True:
            counts = rng.multinomial(self.batch_size, self.probs)
            picks: list[_PoolEpisode] = []
            for s, n in enumerate(counts):
                pool = pools[s]
                picks.extend(pool[i] for i in rng.integers(len(pool), size=n))
                debt[s] += n / self.windows_per_episode
                while debt[s] >= 1:
                    pool[int(rng.integers(len(pool)))] = next(streams[s])
                    debt[s] -= 1
            order = rng.permutation(len(picks))  # mix datasets within the batch
            picks = [picks[i] for i in order]
            # A skipped batch makes exactly the draws of a delivered one but is never collated.
            if self.view == "observation":
                slots = rng.integers(self.windows_per_episode, size=len(picks))
                if skip:
                    skip -= 1
                    continue
                starts = np.array(
                    [ep.timesteps[j] for ep, j in zip(picks, slots, strict=True)], dtype=np.int64
                )
                yield self.collate(picks, starts, slots)
            else:
                lengths = np.array([ep.padded.length for ep in picks])
                starts = (rng.random(len(picks)) * lengths).astype(np.int64)
                if skip:
                    skip -= 1
                    continue
                yield self.collate(picks, starts)


def default_camera_names(registry: EmbodimentRegistry) -> list[str]:
    """Union of the embodiments' cameras in registry order (first appearance wins)."""
    names: list[str] = []
    for spec in registry:
        for cam in spec.cameras:
            if cam not in names:
                names.append(cam)
    return names
