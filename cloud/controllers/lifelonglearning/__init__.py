"""The LifelongLearningJob controller: ``controller`` (state machine), ``downstream`` (which nodes),
``upstream`` (what the edge reported), ``workerenv`` (Sedna worker environment variables)."""
