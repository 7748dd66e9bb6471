"""Stage 3, loader: a split's manifest turned into batches of tensors for one rank.

Takes a manifest (``fishscale.shards.manifest``) and the config, and gives, per epoch, batches of
(images float32 [B, 3, S, S], labels int64 [B]) for one rank. ``sampler`` plans each epoch's
global sample order (instance, sqrt, balanced, repeat-factor or progressive class shares; the
same at any world size, resumable mid-epoch); ``build`` (``build_loader``) cuts the plan into
this rank's batches and hands them to a backend, ``dali_pipeline`` (DALI, CPU or GPU) or
``torch_backend`` (PIL + torchvision), which share the geometry and augmentation draws of
``transforms`` and read member bytes by index offset through ``members``. Next stages:
``fishscale.train`` and ``fishscale.evaluate``.
"""
