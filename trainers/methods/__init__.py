"""One module per policy training method; each maps its run config to TRL in one explicit place."""
