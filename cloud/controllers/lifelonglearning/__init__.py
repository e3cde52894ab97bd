"""The LifelongLearningJob controller: ``controller`` (the state machine, and which nodes hold the
job, from the model's ``node_names``), ``upstream`` (what the edge reported, as state-machine
events), ``workerenv`` (Sedna worker environment variables)."""
