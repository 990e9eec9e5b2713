"""The tasks a store model can do: the one home of their names.

A model's task decides its output layer and how it is used: `causal-lm` models
generate text (chat, QA, translation, code: the LM head), `classification` models
score a fixed label set (a linear head). The catalog stores it per model, the data
formats say which task a file trains, training builds the task's head and the
inference engine serves each task its own way. Everything imports the names from here.
"""

from __future__ import annotations

from typing import Literal

TaskName = Literal["causal-lm", "classification"]
CAUSAL_LM: TaskName = "causal-lm"
CLASSIFICATION: TaskName = "classification"
TASKS: tuple[TaskName, ...] = (CAUSAL_LM, CLASSIFICATION)
#: transformers' class-name suffix of a model with a sequence classification head (what
#: makes an imported folder, or a loaded model, a classifier)
CLASSIFIER_SUFFIX = "ForSequenceClassification"
