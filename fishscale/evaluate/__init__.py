"""Stage 6, evaluate: a trained run scored, compared with others and shipped.

Takes run folders (read by ``runs``, which never writes to them) and a sharded split, and gives
what people read and use: ``eval`` (`fishscale eval`) scores a run's weights, with top-1/5,
macro accuracy and F1 and per-frequency-bin numbers computed by ``metrics``, into JSON, CSV,
Markdown and a predictions file; ``report`` (`fishscale report`) puts runs side by side with
the charts of ``plots``; ``export`` (`fishscale export`) writes plain-timm weights, a
config.json and a model card. This is the last stage.
"""
