"""The LightningDataModule: one or more datasets, a view, windows, normalisation and fixed-length epochs.

Everything the models need at construction (embodiment specs, normalisation statistics, camera names) is
computed in ``__init__`` from the manifests and ``stats.json`` files only, so LightningCLI can link
``data.embodiments`` -> ``model.embodiments`` and ``data.normalization`` -> ``model.normalization``
without reading a shard.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L

from actionprior.checkpoint_file import read_any_payload
from actionprior.data.images import image_fit_of_manifests
from actionprior.data.loader import StreamLoader
from actionprior.data.location import shown_path
from actionprior.data.normalization import Normalizer
from actionprior.data.reader import dataset_views, load_manifest, load_stats
from actionprior.data.schema import MANIFEST_FILE, STATS_FILE, DataError, Episode
from actionprior.data.shards import ShardSource, View, iter_episodes, shard_source
from actionprior.data.stats import merge_stats
from actionprior.data.stream import WindowStream, default_camera_names
from actionprior.embodiments import EmbodimentError, EmbodimentRegistry, EmbodimentSpec

log = logging.getLogger(__name__)


@dataclass
class DatasetSource:
    """A dataset directory and its mixture weight (relative sampling probability of its windows)."""

    path: str
    weight: float = 1.0


def registry_from_manifests(manifests: Mapping[str, Mapping[str, Any]]) -> EmbodimentRegistry:
    """One registry from the union of several manifests; the same name must mean the same robot."""
    specs: dict[str, tuple[EmbodimentSpec, str]] = {}
    for path, manifest in manifests.items():
        for name, data in manifest.get("embodiments", {}).items():
            spec = EmbodimentSpec.from_dict(data, source=f"{path}/manifest.json")
            if name in specs and specs[name][0].io_signature() != spec.io_signature():
                other_spec, other_path = specs[name]
                diffs = [k for k, v in spec.io_signature().items() if other_spec.io_signature()[k] != v]
                raise EmbodimentError(
                    f"embodiment '{name}' is defined differently in {other_path} and {path} "
                    f"(fields {diffs} differ); rename one of them or re-collect with one spec"
                )
            specs.setdefault(name, (spec, path))
    if not specs:
        raise DataError(f"no embodiments in the manifests of {list(manifests)}")
    return EmbodimentRegistry(spec for spec, _ in specs.values())


class ActionPriorDataModule(L.LightningDataModule):
    """Streams windows (trajectory view) or windows plus frames and text (observation view).

    Args:
        datasets: dataset directories with mixture weights.
        view: ``trajectory`` (Stage 1, never reads pixels) or ``observation`` (Stage 2).
        chunk_len: ``H``, steps in the predicted chunk / encoded window.
        history_len: ``K``, past steps in the history window.
        batch_size: windows per batch (per rank).
        num_workers: DataLoader worker processes per rank.
        batches_per_epoch: training batches per epoch per rank (fixed so DDP ranks stay in step).
        val_batches: validation batches per validation run per rank.
        val_fraction: fraction of episodes (by a stable hash of their key) held out for validation.
        normalization: ``quantile`` (1st..99th percentile to [-1, 1]) or ``meanstd``.
        windows_per_episode: windows drawn per decoded episode on average (throughput vs. correlation).
        shuffle_buffer: windows in each worker's shuffle buffer per dataset: a pool of
            ``shuffle_buffer / windows_per_episode`` decoded episodes (at most the dataset's episodes) from
            which windows are drawn at random. The observation view decodes the frames of those windows
            when an episode enters the pool, so a larger buffer costs start-up time and memory.
        cache_mb: per-worker cache of decoded trajectory shards (trajectory view), so resampled shards are
            not parsed again; 0 disables it.
        seed: base seed; streams are seeded by (seed, rank, worker) (validation: its own fixed seed).
        image_size: fit frames to this square size (observation view) as the datasets' import recorded it
            (:mod:`actionprior.data.images`: pad or crop, keeping the aspect ratio); None keeps the stored size.
        camera_names: cameras in batch order; default: union of the embodiments' cameras.
        stats_from: a Stage 1 checkpoint being adapted (``--init_from`` sets it), or the Stage 2 policy a run starts
            from (``--init_policy``: a checkpoint or an exported folder): the embodiments it knows keep its
            normalisation statistics, so the model keeps its meaning; the others take the data's.
        verify_checksums: check every shard against the size and SHA-256 its manifest records, on the
            bytes the stream reads anyway (a mismatch is refused, naming the shard); false skips it.
    """

    def __init__(
        self,
        datasets: list[DatasetSource],
        view: Literal["trajectory", "observation"] = "trajectory",
        chunk_len: int = 8,
        history_len: int = 8,
        batch_size: int = 64,
        num_workers: int = 2,
        batches_per_epoch: int = 200,
        val_batches: int = 20,
        val_fraction: float = 0.1,
        normalization: Literal["quantile", "meanstd"] = "quantile",
        windows_per_episode: int = 4,
        shuffle_buffer: int = 512,
        cache_mb: float = 256.0,
        seed: int = 0,
        image_size: int | None = None,
        camera_names: list[str] | None = None,
        stats_from: str | None = None,
        verify_checksums: bool = True,
    ):
        super().__init__()
        self.sources = [_as_source(d) for d in datasets]
        if not self.sources:
            raise DataError("data.datasets is empty: give at least one dataset directory")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.view: View = view
        self.chunk_len = chunk_len
        self.history_len = history_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.batches_per_epoch = batches_per_epoch
        self.val_batches = val_batches
        self.val_fraction = val_fraction
        self.normalization_mode = normalization
        self.windows_per_episode = windows_per_episode
        self.shuffle_buffer = shuffle_buffer
        self.cache_mb = cache_mb
        self.seed = seed
        self.image_size = image_size
        self.verify_checksums = verify_checksums

        self.manifests = {str(Path(s.path)): load_manifest(s.path) for s in self.sources}
        if view == "observation":
            for path, manifest in self.manifests.items():
                if "observation" not in dataset_views(manifest):
                    raise DataError(
                        f"{path}: a trajectory-only dataset (no obs-*.tar, collected with --no-images) cannot "
                        "feed Stage 2's observation view; list it in Stage 1's data.datasets only"
                    )
        # How frames become image_size x image_size, recorded in the checkpoint for inference.
        self.image_fit = (
            image_fit_of_manifests(self.manifests.items(), image_size)
            if image_size and view == "observation"
            else None
        )
        self._registry = registry_from_manifests(self.manifests)
        stats = self._merged_stats()
        self.stats_origin = dict.fromkeys(self._registry.names, "data")
        if stats_from:
            stats = self._checkpoint_stats(stats, stats_from, normalization)
        self._normalizer = Normalizer(stats, self._registry, normalization)
        self._camera_names = list(camera_names) if camera_names else default_camera_names(self._registry)
        if view == "observation" and not self._camera_names:
            raise DataError(
                f"{', '.join(shown_path(s.path, MANIFEST_FILE) for s in self.sources)}: the observation view "
                "needs cameras, but no embodiment spec lists any"
            )
        self.train_sources = self._split_sources("train")
        self.val_sources = self._split_sources("val") if val_fraction > 0 else []
        if val_fraction > 0 and not self.val_sources:
            raise DataError(
                f"val_fraction={val_fraction} selects no episode of {[s.path for s in self.sources]}; "
                "raise it, or set it to 0 to disable validation"
            )

    def _merged_stats(self) -> dict[str, Any]:
        """The statistics of every dataset (each checked against its own manifest), in one dict."""
        parts = {s.path: load_stats(s.path, self.manifests[str(Path(s.path))]) for s in self.sources}
        try:
            return merge_stats(parts.values())
        except ValueError as exc:
            raise DataError(f"{', '.join(shown_path(p, STATS_FILE) for p in parts)}: {exc}") from None

    def _checkpoint_stats(self, stats: dict[str, Any], path: str, mode: str) -> dict[str, Any]:
        """``stats`` with the entries of the embodiments the checkpoint at ``path`` knows replaced by its own."""
        payload = read_any_payload(path)  # a checkpoint file, or an exported policy folder (--init_policy)
        stored = payload["normalization"]
        if stored.get("mode") != mode:
            raise DataError(
                f"data.stats_from {path}: its statistics are for normalization '{stored.get('mode')}' but "
                f"data.normalization is '{mode}'; set data.normalization: {stored.get('mode')}"
            )
        known = EmbodimentRegistry.from_dicts(payload["embodiments"])
        kept = [name for name in self._registry.names if name in known]
        for name in kept:
            mine, theirs = self._registry[name].io_signature(), known[name].io_signature()
            differing = [k for k in mine if mine[k] != theirs.get(k)]
            if differing:
                raise EmbodimentError(
                    f"embodiment '{name}' differs between the data and the checkpoint {path} (fields "
                    f"{differing}); same name, different robot: rename it in the data"
                )
        stats = dict(stats)
        for name in kept:
            stats[name] = stored["stats"][name]
            self.stats_origin[name] = str(path)
        new = [name for name in self._registry.names if name not in known]
        log.info(
            "normalisation: statistics of %s kept from %s; %s take the data's",
            kept,
            path,
            new or "no other embodiment",
        )
        return stats

    def _split_sources(self, split: Literal["train", "val"]) -> list[ShardSource]:
        out = []
        for src in self.sources:
            manifest = self.manifests[str(Path(src.path))]
            s = shard_source(
                src.path, self.view, split, self.val_fraction, src.weight, manifest, self.verify_checksums
            )
            if s.num_episodes:
                out.append(s)
            elif split == "train":
                raise DataError(
                    f"{src.path}: no training episodes (val_fraction={self.val_fraction} holds out all of them)"
                )
            # A dataset too small to own a validation episode simply does not take part in validation.
        return out

    # -- what models are built from --------------------------------------------------------------------
    @property
    def registry(self) -> EmbodimentRegistry:
        return self._registry

    @property
    def normalizer(self) -> Normalizer:
        return self._normalizer

    @property
    def embodiments(self) -> list[dict[str, Any]]:
        return self._registry.to_dicts()

    @property
    def normalization(self) -> dict[str, Any]:
        return self._normalizer.to_dict()

    @property
    def camera_names(self) -> list[str]:
        return list(self._camera_names)

    # -- loaders -------------------------------------------------------------------------------------
    def make_stream(self, split: Literal["train", "val"], normalize: bool = True) -> WindowStream:
        return WindowStream(
            self.train_sources if split == "train" else self.val_sources,
            self._registry,
            self._normalizer if normalize else None,
            view=self.view,
            split=split,
            val_fraction=self.val_fraction,
            chunk_len=self.chunk_len,
            history_len=self.history_len,
            batch_size=self.batch_size,
            windows_per_episode=self.windows_per_episode,
            shuffle_buffer=self.shuffle_buffer,
            cache_mb=self.cache_mb,
            # Validation draws from its own seed so that it does not replay the training stream.
            seed=self.seed if split == "train" else self.seed + 1_000_003,
            camera_names=self._camera_names,
            image_size=self.image_size,
            image_fit=self.image_fit,
        )

    def train_dataloader(self) -> StreamLoader:
        return StreamLoader(self.make_stream("train"), self.batches_per_epoch, self.num_workers)

    def val_dataloader(self) -> StreamLoader | list:
        if not self.val_sources:
            return []
        return StreamLoader(self.make_stream("val"), self.val_batches, self.num_workers, fixed_epoch=True)

    def val_episodes(self, with_frames: bool = False, max_episodes: int | None = None) -> Iterator[Episode]:
        """Held-out episodes, whole and unnormalised, in a fixed order (for open-loop evaluation)."""
        count = 0
        for src in self.val_sources:
            for episode in iter_episodes(
                src.directory, self._registry, "val", self.val_fraction, with_frames, self.verify_checksums
            ):
                if max_episodes is not None and count >= max_episodes:
                    return
                count += 1
                yield episode


def _as_source(item: DatasetSource | Mapping[str, Any] | str) -> DatasetSource:
    # Python callers may pass plain paths or dicts; LightningCLI passes DatasetSource instances.
    if isinstance(item, DatasetSource):
        return item
    if isinstance(item, str | Path):
        return DatasetSource(str(item))
    if isinstance(item, Mapping):
        return DatasetSource(**item)
    raise TypeError(f"data.datasets entries must be DatasetSource(path, weight), got {item!r}")
