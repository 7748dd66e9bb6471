"""Stage 2, shards: labelled rows packed into WebDataset tar shards, and checked back.

Takes the rows of ``fishscale.data.dataset`` and gives, per split folder, tar shards of
``<key>.jpg`` / ``<key>.cls`` / ``<key>.json`` members, a DALI index beside each tar, and
``manifest.json``, the contract every later stage reads instead of the CSVs. ``shard`` plans,
parallelises and resumes `fishscale shard`; ``imagefix`` normalises each source image once
(EXIF orientation, RGB, longer side capped); ``tarwrite`` writes byte-identical tars and their
indexes; ``manifest`` is the manifest's format; ``verify`` (`fishscale verify`) re-reads every
shard against it. Next stage: ``fishscale.loader``.
"""
