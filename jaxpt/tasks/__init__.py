"""What differs between objectives, given to the one loop (`jaxpt.train.loop.run`).

- `pretraining`: masked LM (and BERT's next-sentence prediction) on `jaxpt prepare` data;
- `classification`: sequence and token classification on labelled tasks (`jaxpt finetune`).

Each task builds its model, its objective (the traced loss: `jaxpt.train.step.Objective`),
the host batches of a step, its evaluation and the metric that picks the best checkpoint.
"""
