"""Stage 5, train: model, loss and loader run under DeepSpeed ZeRO into a run folder.

Takes one resolved config (``fishscale.config``) whose ``data.shards`` holds sharded train and
val splits, and gives a run folder: run.json, config.yaml, classes.json, metrics.jsonl, tb/,
checkpoints/, best.safetensors and last.safetensors. ``loop`` is the training script, read top to bottom
(phases, epochs, validation, resume; `fishscale train`, and ``python -m fishscale.train`` for
one rank under a launcher); ``engine`` is the DeepSpeed side (config merge, ZeRO stage,
precision, weights out); ``checkpoint`` saves atomically, verifies and chooses what to resume;
``safe_load`` keeps every checkpoint load weights-only; ``identity`` says what makes a run the
same run (run.json); ``preempt`` turns SIGTERM / SIGUSR1 into a stop at a step boundary;
``schedule`` sets the learning rate;
``runlog`` writes metrics.jsonl, TensorBoard and the progress bar; ``distributed`` knows the
ranks and their collectives. Next stage: ``fishscale.evaluate``.
"""
