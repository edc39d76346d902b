"Callbacks that run a lossviz `Monitor` inside training frameworks: `lossviz.integrations.lightning` (PyTorch Lightning) and `lossviz.integrations.transformers` (the Hugging Face `Trainer`)."
