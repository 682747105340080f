"""Remote inputs for MONAI pipelines: ``s3://`` (any non-local fsspec URL) paths → local cache.

MONAI's readers open local files only. :class:`CacheRemoted` runs before ``LoadImaged`` and
replaces every remote path of the selected keys (a single path, or a list of paths for
multi-channel images and rater labels) by a local copy in the calibseg cache
(``$CALIBSEG_CACHE`` or ``~/.cache/calibseg``, keyed by URL, size and ETag, so a changed object
is downloaded again and an unchanged one only costs one HEAD request). Local paths pass
through unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from calibseg import storage

__all__ = ["cache_remote", "CacheRemoted"]


def cache_remote(value: Any) -> Any:
    """``value`` with remote paths replaced by local cached copies.

    ``value``: a path/URL string, a list/tuple of them (returned as a list), or anything else
    (returned unchanged, e.g. None or an already loaded array). Raises FileNotFoundError for a
    missing object.
    """
    if isinstance(value, (list, tuple)):
        return [cache_remote(v) for v in value]
    if isinstance(value, str) and storage.is_remote(value):
        with storage.local_path(value) as local:  # the cache persists after the block
            return local
    return value


class CacheRemoted(MapTransform):
    """Dictionary transform: remote paths under ``keys`` → local cached copies (before loading).

    Args:
        keys: keys whose values are a path or a list of paths (e.g. "image", "label",
            "raters", "rater_1").
        allow_missing_keys: skip keys absent from the item (default True: labels and raters
            are optional).
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = cache_remote(d[key])
        return d
