"""Synthetic fish-vista: procedurally drawn fish in fish-vista's exact layout and schema.

`fishscale synth OUT` writes ``OUT/classification_{train,val,test}.csv`` (the 15 published
columns, in order) and ``OUT/Images/``, so every stage runs without the real download
(docs/synth.md). ``profiles`` says which species and how many images per split; ``traits``
what each family, species and specimen looks like; ``drawing`` draws one fish from its traits;
``metadata`` makes its CSV row (sources, licences, file names); ``write`` plans the dataset,
draws the images in parallel and writes the folder. Deterministic: traits depend only on
names, each image only on (seed, image id), so the bytes are the same whatever the workers.
"""
