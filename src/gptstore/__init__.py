"""gptstore: a self-hosted store of GPT-style language models.

Pick a pre-trained model, fine-tune it on your own data for a task, publish the result
with a model card and measured metrics, and use any model in the store from an
OpenAI-compatible API, a Python SDK, a CLI and a web UI.
"""

__version__ = "0.1.0"
