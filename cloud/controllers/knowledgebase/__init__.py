"""The GM's half of the unseen-sample loop (docs/operations.md, "Unseen samples and their labels"):
``unseen`` (the ``UnseenSamples`` reports of the edges, stored in the knowledge base),
``labelled`` (labelled samples sent to their Dataset's node as ``LabelledSamples`` batches, and
the nodes' reports that they were appended), ``status`` (each job's ``status.knowledgeBase``,
kept from the knowledge base's summary). They use the knowledge base only through its Protocol
(``lifelong.cloud.kb.base.KnowledgeBase``)."""
