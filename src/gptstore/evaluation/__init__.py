"""Task evaluation: the metrics of each task and the sandbox that runs generated code.

Public entry points:

- `metrics`: `classification_metrics`, `language_modeling_metrics`,
  `question_answering_metrics`, `translation_metrics`, `pass_at_k` / `pass_at_k_scores`;

Does not know: models, the inference engine or the CLI; whoever evaluates a model
generates the predictions and calls these. No torch is imported by this package.
"""
