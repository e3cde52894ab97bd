"""The knowledge base (KB): tasks, task groups and their models, samples, unseen samples and
their labels, per-round metrics, the versioned task index (docs/knowledge-base.md).

``lifelong kb serve`` runs it alone; ``lifelong gm`` can run it in its own process. The GM
reaches it through ``KnowledgeBase`` (``base.py``), in process or over HTTP."""
