"""Stage 4, model and loss: the network that is trained and the objective it is trained on.

Takes the ``model`` and ``loss`` config sections, the number of classes and the training class
counts, and gives a plain timm module and a loss module. ``factory`` (``build_model``) builds any
timm architecture with pretrained weights from a local file or the hub, an optional MLP head,
backbone freezing and the optimizer's parameter groups; ``losses/`` (``build_loss``) holds one
file per loss: focal, cross-entropy, logit-adjusted, LDAM with deferred re-weighting, and the
class weights they share. Next stage: ``fishscale.train``.
"""
