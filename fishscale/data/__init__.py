"""Stage 1, data: a fish-vista root read into labelled rows, or a synthetic one written.

Takes a dataset root in fish-vista's layout (``classification_{train,val,test}.csv`` and
``Images/``, flat or the hub's ``Images/chunk_N/``) and gives, per split, validated rows with
their image paths, the class index (the sorted species of the training split), per-class
training counts and each class's frequency bin: ``dataset`` reads and checks the CSVs, ``bins``
holds the bin edges and names (ultra-rare < 10, minority 10-99, neutral 100-499, majority 500+).
``synth/`` writes such a root of procedurally drawn fish (`fishscale synth`), so every later
stage runs without the real download. Next stage: ``fishscale.shards``.
"""
